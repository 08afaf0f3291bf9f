//! Per-job authorization: which authenticated user may push or delete which jobs, and who may use the admin
//! endpoints (`authorization:` in the gateway's config file). Pure: no I/O, no HTTP.
//!
//! The server room authenticates (`basic_auth_users` of `--web.config.file`, or else a client certificate verified
//! against `client_ca_file`, whose first DNS subject alternative name is the user) and hands the verified user to
//! the gateway's service as a [`User`] request extension; handlers ask [`Authorization::check`]. The rules:
//!
//! - a listed user may push, push-add and delete the groups of every job its `push_jobs` regex matches (fully
//!   anchored, as Prometheus' relabeling regexes are); without `push_jobs` it pushes nothing;
//! - `admin: true` may also use the endpoints that change the gateway or every node (`/-/reload`, the wipe);
//! - every authenticated user, listed or not, may read (it passed authentication); an unlisted one only reads.

use std::collections::BTreeMap;
use std::sync::Arc;

/// The user the server room verified for this request (a request extension). Only the server room creates one,
/// after checking the credentials; the service trusts it without checking again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User(pub Arc<str>);

/// What a request wants to do that needs a permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// `PUT` or `POST` of a group of `job`.
    Push { job: &'a str },
    /// `DELETE` of a group of `job`.
    Delete { job: &'a str },
    /// An admin endpoint, named as its path (e.g. `/-/reload`).
    Admin { endpoint: &'a str },
}

/// `authorization.users.<name>`.
#[derive(Clone, Debug)]
pub struct UserRules {
    push_jobs: Option<JobPattern>,
    admin: bool,
}

#[derive(Clone, Debug)]
struct JobPattern {
    /// As written in the file, for messages.
    source: String,
    /// `^(?:source)$`.
    regex: regex::Regex,
}

impl UserRules {
    /// `push_jobs` is a regex the whole job name must match (RE2 syntax, Prometheus' anchoring).
    pub fn new(push_jobs: Option<&str>, admin: bool) -> Result<UserRules, regex::Error> {
        let push_jobs = match push_jobs {
            Some(source) => Some(JobPattern {
                source: source.to_string(),
                regex: regex::Regex::new(&format!("^(?:{source})$"))?,
            }),
            None => None,
        };
        Ok(UserRules { push_jobs, admin })
    }
}

impl PartialEq for UserRules {
    fn eq(&self, other: &Self) -> bool {
        self.admin == other.admin
            && self.push_jobs.as_ref().map(|p| &p.source)
                == other.push_jobs.as_ref().map(|p| &p.source)
    }
}

impl Eq for UserRules {}

/// `authorization.users`: user name -> rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Authorization {
    users: BTreeMap<String, UserRules>,
}

/// Why a request was refused: the `reason` label of `dynamic_sharding_http_requests_forbidden_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// No verified user reached the service (e.g. no client certificate with `VerifyClientCertIfGiven`).
    Unauthenticated,
    /// The user is not in `authorization.users`: it may only read.
    UnlistedUser,
    /// The job does not match the user's `push_jobs` (or it has none).
    JobNotAllowed,
    /// An admin endpoint, and the user's `admin` is not `true`.
    NotAdmin,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Unauthenticated => "unauthenticated",
            RefusalReason::UnlistedUser => "unlisted_user",
            RefusalReason::JobNotAllowed => "job_not_allowed",
            RefusalReason::NotAdmin => "not_admin",
        }
    }
}

/// A refused request: the reason, and a message for the client that names the rule (never a credential).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub message: String,
}

impl Authorization {
    pub fn new(users: impl IntoIterator<Item = (String, UserRules)>) -> Authorization {
        Authorization {
            users: users.into_iter().collect(),
        }
    }

    /// The users the rules name, in order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// Whether `user` (the verified one, `None` when none) may do `action`.
    pub fn check(&self, user: Option<&str>, action: Action<'_>) -> Result<(), Refusal> {
        let (verb, object) = match action {
            Action::Push { job } => ("push", Object::Job(job)),
            Action::Delete { job } => ("delete", Object::Job(job)),
            Action::Admin { endpoint } => ("use", Object::Endpoint(endpoint)),
        };
        let Some(user) = user else {
            return Err(Refusal {
                reason: RefusalReason::Unauthenticated,
                message: format!(
                    "no authenticated user may {verb} {object}: log in with basic auth or a verified client certificate"
                ),
            });
        };
        let Some(rules) = self.users.get(user) else {
            return Err(Refusal {
                reason: RefusalReason::UnlistedUser,
                message: format!(
                    "user {user:?} may not {verb} {object}: it is not in authorization.users, so it may only read"
                ),
            });
        };
        match object {
            Object::Job(job) => match &rules.push_jobs {
                Some(pattern) if pattern.regex.is_match(job) => Ok(()),
                Some(pattern) => Err(Refusal {
                    reason: RefusalReason::JobNotAllowed,
                    message: format!(
                        "user {user:?} may not {verb} {object}: authorization.users.{user}.push_jobs is {:?}",
                        pattern.source
                    ),
                }),
                None => Err(Refusal {
                    reason: RefusalReason::JobNotAllowed,
                    message: format!(
                        "user {user:?} may not {verb} {object}: authorization.users.{user} has no push_jobs"
                    ),
                }),
            },
            Object::Endpoint(_) if rules.admin => Ok(()),
            Object::Endpoint(_) => Err(Refusal {
                reason: RefusalReason::NotAdmin,
                message: format!(
                    "user {user:?} may not {verb} {object}: authorization.users.{user}.admin is not true"
                ),
            }),
        }
    }
}

#[derive(Clone, Copy)]
enum Object<'a> {
    Job(&'a str),
    Endpoint(&'a str),
}

impl std::fmt::Display for Object<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Object::Job(job) => write!(f, "job {job:?}"),
            Object::Endpoint(endpoint) => write!(f, "{endpoint}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules(push_jobs: Option<&str>, admin: bool) -> UserRules {
        UserRules::new(push_jobs, admin).unwrap()
    }

    fn example() -> Authorization {
        Authorization::new([
            ("team-a".to_string(), rules(Some("team_a_.*"), false)),
            ("ops".to_string(), rules(Some(".*"), true)),
            ("auditor".to_string(), rules(None, false)),
            ("janitor".to_string(), rules(None, true)),
        ])
    }

    #[test]
    fn a_user_pushes_and_deletes_only_the_jobs_its_regex_matches() {
        let authz = example();
        for action in [
            Action::Push { job: "team_a_x" },
            Action::Delete { job: "team_a_x" },
        ] {
            assert_eq!(authz.check(Some("team-a"), action), Ok(()));
        }
        let refused = authz
            .check(Some("team-a"), Action::Push { job: "team_b_x" })
            .unwrap_err();
        assert_eq!(refused.reason, RefusalReason::JobNotAllowed);
        assert_eq!(
            refused.message,
            r#"user "team-a" may not push job "team_b_x": authorization.users.team-a.push_jobs is "team_a_.*""#
        );
        let refused = authz
            .check(Some("team-a"), Action::Delete { job: "team_b_x" })
            .unwrap_err();
        assert!(refused
            .message
            .starts_with(r#"user "team-a" may not delete job "team_b_x""#));
    }

    #[test]
    fn the_regex_is_anchored_at_both_ends() {
        let authz = Authorization::new([("u".to_string(), rules(Some("a|b"), false))]);
        assert!(authz.check(Some("u"), Action::Push { job: "a" }).is_ok());
        assert!(authz.check(Some("u"), Action::Push { job: "b" }).is_ok());
        for job in ["ab", "xa", "bx", "a|b"] {
            assert!(
                authz.check(Some("u"), Action::Push { job }).is_err(),
                "{job} must not match a|b"
            );
        }
    }

    #[test]
    fn admin_endpoints_need_admin_true() {
        let authz = example();
        let reload = Action::Admin {
            endpoint: "/-/reload",
        };
        assert_eq!(authz.check(Some("ops"), reload), Ok(()));
        assert_eq!(authz.check(Some("janitor"), reload), Ok(()));
        let refused = authz.check(Some("team-a"), reload).unwrap_err();
        assert_eq!(refused.reason, RefusalReason::NotAdmin);
        assert_eq!(
            refused.message,
            r#"user "team-a" may not use /-/reload: authorization.users.team-a.admin is not true"#
        );
        // Admin does not imply pushing.
        let refused = authz
            .check(Some("janitor"), Action::Push { job: "j" })
            .unwrap_err();
        assert_eq!(refused.reason, RefusalReason::JobNotAllowed);
        assert!(refused.message.contains("has no push_jobs"));
    }

    #[test]
    fn unlisted_and_missing_users_are_refused_with_their_own_reason() {
        let authz = example();
        let refused = authz
            .check(Some("prometheus"), Action::Push { job: "j" })
            .unwrap_err();
        assert_eq!(refused.reason, RefusalReason::UnlistedUser);
        assert!(refused.message.contains("not in authorization.users"));
        let refused = authz
            .check(
                None,
                Action::Admin {
                    endpoint: "/api/v1/admin/wipe",
                },
            )
            .unwrap_err();
        assert_eq!(refused.reason, RefusalReason::Unauthenticated);
    }

    #[test]
    fn invalid_regexes_are_errors_and_equality_follows_the_source() {
        assert!(UserRules::new(Some("team_(a"), false).is_err());
        assert_eq!(rules(Some("a.*"), true), rules(Some("a.*"), true));
        assert_ne!(rules(Some("a.*"), true), rules(Some("a.*"), false));
        assert_ne!(rules(Some("a.*"), false), rules(None, false));
    }

    fn job() -> impl Strategy<Value = String> {
        // Job names as clients send them, plus the odd characters a decoded path may hold.
        "[a-zA-Z0-9_:.\\-/ \u{fffd}]{1,24}"
    }

    proptest! {
        /// `push_jobs` set to a job's escaped name allows exactly that job, for push and delete alike.
        #[test]
        fn an_escaped_literal_allows_exactly_that_job(allowed in job(), other in job()) {
            let authz = Authorization::new([(
                "u".to_string(),
                rules(Some(&regex::escape(&allowed)), false),
            )]);
            let push = Action::Push { job: &allowed };
            let delete = Action::Delete { job: &allowed };
            prop_assert!(authz.check(Some("u"), push).is_ok());
            prop_assert!(authz.check(Some("u"), delete).is_ok());
            let push_other = Action::Push { job: &other };
            prop_assert_eq!(authz.check(Some("u"), push_other).is_ok(), other == allowed);
        }

        /// A user not in the rules never writes and never administers, whatever the rules say about others.
        #[test]
        fn an_unlisted_user_never_writes(user in "[a-z]{1,8}", job in job(), admin in any::<bool>()) {
            let authz = Authorization::new([("listed".to_string(), rules(Some(".*"), admin))]);
            prop_assume!(user != "listed");
            for action in [Action::Push { job: &job }, Action::Delete { job: &job }, Action::Admin { endpoint: "/-/reload" }] {
                let refused = authz.check(Some(&user), action).unwrap_err();
                prop_assert_eq!(refused.reason, RefusalReason::UnlistedUser);
            }
        }

        /// Push and delete are one permission; admin is independent of it. Every refusal names the user and
        /// the rule's key.
        #[test]
        fn push_and_delete_agree_and_refusals_name_the_rule(
            pattern in "[a-c]{0,2}(\\.\\*)?",
            job in "[a-c]{1,3}",
            admin in any::<bool>(),
        ) {
            let authz = Authorization::new([("u".to_string(), rules(Some(&pattern), admin))]);
            let push = authz.check(Some("u"), Action::Push { job: &job });
            let delete = authz.check(Some("u"), Action::Delete { job: &job });
            prop_assert_eq!(push.is_ok(), delete.is_ok());
            let reload = Action::Admin { endpoint: "/-/reload" };
            prop_assert_eq!(authz.check(Some("u"), reload).is_ok(), admin);
            if let Err(refused) = push {
                prop_assert!(refused.message.contains("\"u\""));
                prop_assert!(refused.message.contains("authorization.users.u.push_jobs"), "{}", refused.message);
            }
        }
    }
}
