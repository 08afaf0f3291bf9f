"""What basic auth on the listener costs per push: gateway CPU (utime+stime from /proc) over N sequential PUTs on
one keep-alive connection, plain HTTP, against one real Pushgateway: auth off, auth on with the right password
(a cache hit), and a new wrong password per request (one bcrypt each, 401).
Usage: python3 -W ignore bench/listener_auth_cost.py [N]   (DS_BIN=path to the gateway binary)"""
import base64, http.client, os, socket, subprocess, sys, tempfile, time, crypt
BIN=os.environ.get("DS_BIN", "target/release/dynamic-sharding")
os.chdir(tempfile.mkdtemp(prefix="ds-auth-bench-"))
def free_port():
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]; s.close(); return p
def cpu(pid):
    f=open(f"/proc/{pid}/stat").read().rsplit(")",1)[1].split()
    return (int(f[11])+int(f[12]))/os.sysconf("SC_CLK_TCK")
def wait(port, headers):
    for _ in range(400):
        try:
            c=http.client.HTTPConnection("127.0.0.1",port,timeout=2); c.request("GET","/-/healthy",headers=headers)
            if c.getresponse().status==200: return
        except Exception: pass
        time.sleep(0.05)
    raise SystemExit("not ready")
pg=free_port()
pgw=subprocess.Popen(["prometheus-pushgateway",f"--web.listen-address=127.0.0.1:{pg}","--persistence.file="],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
time.sleep(1)
open("config.yml","w").write(f"mode: proxy\npushgateway:\n  servers: ['127.0.0.1:{pg}']\n")
pw="benchpassword"
h=crypt.crypt(pw, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1<<10))
open("web.yml","w").write(f"basic_auth_users:\n  pusher: '{h}'\n")
N=int(sys.argv[1]) if len(sys.argv)>1 else 2000
good={"Authorization":"Basic "+base64.b64encode(f"pusher:{pw}".encode()).decode()}
for name, web, headers, n in [("auth off",None,{},N),("auth on, cached",True,good,N),("auth on, a new wrong password each time (one bcrypt cost 10 each)",True,"fresh",100)]:
    port=free_port()
    args=[BIN,"--config.file=config.yml",f"--web.listen-address=127.0.0.1:{port}","--log.level=warn"]
    if web: args.append("--web.config.file=web.yml")
    gw=subprocess.Popen(args,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
    try:
        wait(port, good); time.sleep(1.5)
        c=http.client.HTTPConnection("127.0.0.1",port,timeout=30)
        before=cpu(gw.pid); t=time.time(); statuses={}
        for i in range(n):
            h = {"Authorization":"Basic "+base64.b64encode(f"pusher:wrong{i}".encode()).decode()} if headers=="fresh" else headers
            c.request("PUT",f"/metrics/job/bench/i/{i%50}",body=b"bench_metric 1\n",headers=h)
            r=c.getresponse(); r.read(); statuses[r.status]=statuses.get(r.status,0)+1
        el=time.time()-t; used=cpu(gw.pid)-before
        print(f"{name}: {n} pushes, statuses {statuses}, gateway CPU {used*1e6/n:.0f} us/push, wall {el*1e6/n:.0f} us/push")
    finally:
        gw.terminate(); gw.wait()
pgw.terminate(); pgw.wait()
