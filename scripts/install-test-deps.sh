#!/usr/bin/env bash
# Installs what the integration tests run against: Pushgateway, Prometheus (and its promtool), curl, Debian's
# python3 with prometheus_client, headless Chromium with a font for the status page test, systemd-analyze for
# the unit file test, dnsmasq for the dns_sd tests (apt), a Consul binary at tools/bin/consul (from Debian bullseye,
# which bookworm lacks), and kubernetes-validate (PyPI, with the Kubernetes schemas inside) in a venv at
# tools/kubernetes-validate for the deploy/kubernetes manifests.
#
# Idempotent and quick when everything is present: apt is only touched when a package is missing, and Consul is
# only fetched when tools/bin/consul does not run. Never adds bullseye to the system's apt sources: the bullseye
# lists live in a temporary directory that is removed on exit.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
consul_bin="$repo_root/tools/bin/consul"
kubernetes_validate_venv="$repo_root/tools/kubernetes-validate"
# Pinned: its schemas are those of the Kubernetes release of the same version.
kubernetes_validate_version=1.37.0
# openssl makes the TLS tests' certificates (tests/common/tls.rs); python3's crypt module makes their bcrypt hashes.
# chromium (and a font) renders the status page; systemd's systemd-analyze checks the unit file.
# dnsmasq-base is the DNS server of the dns_sd tests (tests/common/dnsmasq.rs; only the binary, no service).
apt_packages=(prometheus-pushgateway prometheus python3-prometheus-client curl openssl chromium fonts-dejavu-core systemd dnsmasq-base python3-venv)

log() { printf 'install-test-deps: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# CI runs as root; a developer machine may need sudo.
if [[ $(id -u) -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    as_root=()
fi
export DEBIAN_FRONTEND=noninteractive

package_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == "installed" ]]
}

install_apt_packages() {
    local missing=()
    for package in "${apt_packages[@]}"; do
        package_installed "$package" || missing+=("$package")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "apt packages present: ${apt_packages[*]}"
        return
    fi
    log "installing apt packages: ${missing[*]}"
    "${as_root[@]}" apt-get update -q
    # The Debian packages try to start their services; without systemd (or with policy-rc.d) that is a no-op,
    # and our tests never rely on default ports anyway: every process gets its own free port.
    "${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# Prints the first URIs: value of the deb822 entry whose Suites: include bookworm.
bookworm_mirror_uri() {
    local sources_file=/etc/apt/sources.list.d/debian.sources
    [[ -r $sources_file ]] || die "$sources_file not found: cannot tell which Debian mirror to fetch Consul from"
    awk '
        function flush() { if (has_bookworm && uri != "" && !done) { print uri; done = 1 } has_bookworm = 0; uri = "" }
        /^[[:space:]]*$/ { flush(); next }
        /^URIs:/ { if (uri == "") uri = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") has_bookworm = 1 }
        END { flush() }
    ' "$sources_file"
}

# The keyring that verifies bullseye's Release file: the combined archive keyring if it carries bullseye's keys,
# otherwise the bullseye-specific keyrings shipped by debian-archive-keyring.
bullseye_keyring() {
    local combined=/usr/share/keyrings/debian-archive-keyring.gpg
    if [[ -r $combined ]] && command -v gpg >/dev/null 2>&1 &&
        gpg --show-keys --with-colons "$combined" 2>/dev/null | grep -q '^uid:.*(11/bullseye)'; then
        echo "$combined"
        return
    fi
    local specific
    for specific in /usr/share/keyrings/debian-archive-bullseye-automatic.gpg \
        /usr/share/keyrings/debian-archive-bullseye-stable.gpg; do
        if [[ -r $specific ]]; then
            echo "$specific"
            return
        fi
    done
    # Without gpg we cannot inspect the combined keyring; apt will still check the signature with it.
    [[ -r $combined ]] || die "no keyring for Debian bullseye found in /usr/share/keyrings (install debian-archive-keyring)"
    echo "$combined"
}

consul_runs() {
    [[ -x $consul_bin ]] && "$consul_bin" version >/dev/null 2>&1
}

install_consul() {
    if consul_runs; then
        log "consul present: $("$consul_bin" version | head -n1)"
        return
    fi
    local mirror keyring work
    mirror="$(bookworm_mirror_uri)"
    [[ -n $mirror ]] || die "no URIs: line for suite bookworm in /etc/apt/sources.list.d/debian.sources"
    keyring="$(bullseye_keyring)"
    work="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand $work now: it is local to this function
    trap "rm -rf '$work'" EXIT
    mkdir -p "$work/sources" "$work/lists/partial" "$work/download"
    cat >"$work/sources/bullseye.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bullseye
Components: main
Signed-By: $keyring
EOF
    # Private sources and lists; empty pkgcache settings keep apt from overwriting the system's package cache.
    local apt_options=(
        -o Dir::Etc::sourcelist=/dev/null
        -o "Dir::Etc::sourceparts=$work/sources"
        -o "Dir::State::Lists=$work/lists"
        -o Dir::Cache::pkgcache=
        -o Dir::Cache::srcpkgcache=
        -o APT::Sandbox::User=root
    )
    log "fetching consul from Debian bullseye ($mirror)"
    # --error-on=any: a bad signature or missing index must stop here, not surface later as "no consul".
    apt-get "${apt_options[@]}" update -q --error-on=any
    (cd "$work/download" && apt-get "${apt_options[@]}" download consul)
    local deb
    deb="$(find "$work/download" -maxdepth 1 -name 'consul_*.deb' | head -n1)"
    [[ -n $deb ]] || die "apt-get download consul produced no .deb"
    dpkg -x "$deb" "$work/extract"
    [[ -x $work/extract/usr/bin/consul ]] || die "$deb has no usr/bin/consul"
    mkdir -p "$(dirname "$consul_bin")"
    install -m 0755 "$work/extract/usr/bin/consul" "$consul_bin"
    rm -rf "$work"
    trap - EXIT
    consul_runs || die "$consul_bin was installed but 'consul version' fails"
    log "installed $("$consul_bin" version | head -n1) at $consul_bin"
}

install_kubernetes_validate() {
    local bin="$kubernetes_validate_venv/bin/kubernetes-validate"
    if [[ -x $bin ]] && [[ "$("$bin" --version 2>/dev/null)" == *"$kubernetes_validate_version"* ]]; then
        log "kubernetes-validate present: $("$bin" --version)"
        return
    fi
    log "installing kubernetes-validate $kubernetes_validate_version into $kubernetes_validate_venv"
    rm -rf "$kubernetes_validate_venv"
    /usr/bin/python3 -m venv "$kubernetes_validate_venv"
    "$kubernetes_validate_venv/bin/pip" install --quiet "kubernetes-validate==$kubernetes_validate_version"
    "$bin" --version >/dev/null || die "$bin was installed but does not run"
}

install_apt_packages
[[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import prometheus_client' ||
    die "/usr/bin/python3 cannot import prometheus_client (package python3-prometheus-client)"
install_consul
install_kubernetes_validate
