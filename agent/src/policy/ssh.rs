//! The SSH conditions of a `[[policy.rule]]`: `commands`, `regex`, `ssh_requests`.
//!
//! ```toml
//! [[policy.rule]]
//! name = "no-destruction"
//! verdict = "deny"
//! commands = ["rm -rf *", "systemctl stop *"]   # globs on the command line
//!
//! [[policy.rule]]
//! name = "restarts-need-a-human"
//! verdict = "approve"
//! regex = '^sudo\s+systemctl\s+restart\b'
//!
//! [[policy.rule]]
//! name = "db-tunnel"
//! verdict = "allow"
//! ssh_requests = ["direct-tcpip"]              # port forwarding, agent, X11: see below
//! ```
//!
//! What an SSH session asks for is one [`SshRequest`]: an `exec` (with its command
//! line), a `shell`, a `subsystem` (`sftp`), a `pty`, or a forwarding request
//! (`direct-tcpip`: `ssh -L`/`-W`/`-J`; `tcpip-forward`: `ssh -R`; `streamlocal`: Unix
//! socket forwarding either way; `agent`: agent forwarding, `ssh -A`; `x11`).
//!
//! `commands` globs (`*` spans anything, `/` and spaces included) and `regex` match
//! exec requests only. A glob is tried against the whole command line (runs of
//! whitespace read as one space) and against each simple command in it (split at `;`,
//! `&&`, `||`, `|`, `&` and newlines outside quotes), each also with its program's
//! directory removed (`/bin/rm -rf /` is also tried as `rm -rf /`). These rules are a
//! guardrail for what bots are meant to run, not a sandbox: a shell can always spell a
//! command another way (`sh -c`, quoting, variables); deny by default and allow what is
//! expected where that matters.
//!
//! SFTP requests (the `sftp` subsystem: `sftp`, and `scp` in its default mode) are
//! judged one by one by the rules that set `sftp_ops` (`read`, `write` (an open for
//! writing), `remove`, `rename`, `mkdir`, `rmdir`, `setstat`, `symlink`, `hardlink`)
//! and/or `sftp_paths` (globs over the paths a request names; `*` stays within one
//! directory, `**` spans any): the first such rule that matches decides, else the
//! policy's `default`. Listing and stat-ing are never refused (they are journaled when
//! they open a directory).
//!
//! `ssh_requests` names kinds (`exec`, `shell`, `subsystem`, `pty`, `direct-tcpip`,
//! `tcpip-forward`, `streamlocal`, `agent`, `x11`). Forwarding kinds are refused unless
//! a rule naming them in `ssh_requests` allows them: a rule without `ssh_requests` (or
//! the policy's `default`) never opens a tunnel. The policy's `pty = false` refuses
//! terminals before any rule is read.
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use regex::Regex;
use toml::Spanned;

use super::PolicyProblem;

/// What an SSH client asks for, as rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SshKind {
    Exec,
    Shell,
    Subsystem,
    Pty,
    DirectTcpip,
    TcpipForward,
    Streamlocal,
    Agent,
    X11,
}

impl SshKind {
    pub const ALL: &'static [SshKind] = &[
        SshKind::Exec,
        SshKind::Shell,
        SshKind::Subsystem,
        SshKind::Pty,
        SshKind::DirectTcpip,
        SshKind::TcpipForward,
        SshKind::Streamlocal,
        SshKind::Agent,
        SshKind::X11,
    ];

    /// The name used in `ssh_requests` and in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            SshKind::Exec => "exec",
            SshKind::Shell => "shell",
            SshKind::Subsystem => "subsystem",
            SshKind::Pty => "pty",
            SshKind::DirectTcpip => "direct-tcpip",
            SshKind::TcpipForward => "tcpip-forward",
            SshKind::Streamlocal => "streamlocal",
            SshKind::Agent => "agent",
            SshKind::X11 => "x11",
        }
    }

    /// Whether this kind opens a path other than the session's own channel (refused
    /// unless a rule naming it allows it).
    pub fn is_forwarding(self) -> bool {
        matches!(
            self,
            SshKind::DirectTcpip
                | SshKind::TcpipForward
                | SshKind::Streamlocal
                | SshKind::Agent
                | SshKind::X11
        )
    }

    fn from_name(name: &str) -> Option<SshKind> {
        SshKind::ALL.iter().copied().find(|k| k.as_str() == name)
    }
}

/// One SSH request as rules see it.
#[derive(Debug, Clone, Copy)]
pub struct SshRequest<'a> {
    pub kind: SshKind,
    /// The command line of an exec request.
    pub command: Option<&'a str>,
}

/// One SFTP request as rules see it.
#[derive(Debug, Clone, Copy)]
pub struct SftpRequest<'a> {
    /// "read", "write", "remove", "rename", "mkdir", "rmdir", "setstat", "symlink",
    /// "hardlink".
    pub op: &'a str,
    pub paths: &'a [&'a str],
}

/// The SFTP operations `sftp_ops` may name.
pub const SFTP_OPS: &[&str] = &[
    "read", "write", "remove", "rename", "mkdir", "rmdir", "setstat", "symlink", "hardlink",
];

/// The SSH conditions of one rule; each one set must hold.
#[derive(Debug, Clone, Default)]
pub struct SshMatch {
    commands: Option<GlobSet>,
    regex: Option<Regex>,
    requests: Option<Vec<SshKind>>,
    sftp_ops: Option<Vec<String>>,
    sftp_paths: Option<GlobSet>,
}

impl SshMatch {
    /// Whether the rule sets any SSH condition.
    pub fn is_set(&self) -> bool {
        self.commands.is_some() || self.regex.is_some() || self.requests.is_some() || self.is_sftp()
    }

    /// Whether the rule sets SSH conditions other than `commands` (which Redis rules
    /// share): `regex`, `ssh_requests`, SFTP ones.
    pub fn has_non_command_conditions(&self) -> bool {
        self.regex.is_some() || self.requests.is_some() || self.is_sftp()
    }

    /// Whether the rule sets SFTP conditions (it then judges SFTP requests only).
    pub fn is_sftp(&self) -> bool {
        self.sftp_ops.is_some() || self.sftp_paths.is_some()
    }

    /// An SFTP request: the rule's SFTP conditions (a rule without any does not judge
    /// SFTP requests).
    pub fn matches_sftp(&self, request: &SftpRequest<'_>) -> bool {
        if !self.is_sftp() {
            return false;
        }
        if let Some(ops) = &self.sftp_ops {
            if !ops.iter().any(|o| o == request.op) {
                return false;
            }
        }
        if let Some(paths) = &self.sftp_paths {
            if !request.paths.iter().any(|p| paths.is_match(p)) {
                return false;
            }
        }
        true
    }

    /// Whether the rule names `kind` in `ssh_requests`.
    pub fn names(&self, kind: SshKind) -> bool {
        self.requests.as_ref().is_some_and(|r| r.contains(&kind))
    }

    pub fn matches(&self, request: &SshRequest<'_>) -> bool {
        if self.is_sftp() {
            return false;
        }
        if let Some(kinds) = &self.requests {
            if !kinds.contains(&request.kind) {
                return false;
            }
        } else if request.kind.is_forwarding() {
            return false;
        }
        if self.commands.is_none() && self.regex.is_none() {
            return true;
        }
        let Some(command) = request.command.filter(|_| request.kind == SshKind::Exec) else {
            return false;
        };
        if let Some(globs) = &self.commands {
            if !command_candidates(command).any(|c| globs.is_match(c.as_str())) {
                return false;
            }
        }
        if let Some(regex) = &self.regex {
            if !regex.is_match(command) {
                return false;
            }
        }
        true
    }

    /// Validates the SSH keys of rule `rule`.
    pub fn from_raw(
        rule: &str,
        commands: Option<&[Spanned<String>]>,
        regex: Option<&Spanned<String>>,
        requests: Option<&[Spanned<String>]>,
        sftp_ops: Option<&[Spanned<String>]>,
        sftp_paths: Option<&[Spanned<String>]>,
    ) -> Result<SshMatch, PolicyProblem> {
        let sftp_ops = sftp_ops
            .map(|ops| {
                if ops.is_empty() {
                    return Err(PolicyProblem {
                        span: None,
                        message: format!("rule \"{rule}\": sftp_ops = [] can never match; remove it or list operations"),
                    });
                }
                ops.iter()
                    .map(|o| {
                        if SFTP_OPS.contains(&o.get_ref().as_str()) {
                            Ok(o.get_ref().clone())
                        } else {
                            Err(PolicyProblem::at(
                                o,
                                format!(
                                    "unknown SFTP operation \"{}\" in rule \"{rule}\"; known: {}",
                                    o.get_ref(),
                                    SFTP_OPS.join(", ")
                                ),
                            ))
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let sftp_paths = sftp_paths
            .map(|globs| {
                if globs.is_empty() {
                    return Err(PolicyProblem {
                        span: None,
                        message: format!("rule \"{rule}\": sftp_paths = [] can never match; remove it or list globs"),
                    });
                }
                let mut set = GlobSetBuilder::new();
                for glob in globs {
                    let compiled = GlobBuilder::new(glob.get_ref())
                        .literal_separator(true)
                        .build()
                        .map_err(|e| {
                            PolicyProblem::at(
                                glob,
                                format!("invalid glob \"{}\" in sftp_paths of rule \"{rule}\": {}", glob.get_ref(), e.kind()),
                            )
                        })?;
                    set.add(compiled);
                }
                set.build().map_err(|e| PolicyProblem {
                    span: None,
                    message: format!("rule \"{rule}\": sftp_paths: {e}"),
                })
            })
            .transpose()?;
        if (sftp_ops.is_some() || sftp_paths.is_some())
            && (commands.is_some() || regex.is_some() || requests.is_some())
        {
            return Err(PolicyProblem {
                span: None,
                message: format!("rule \"{rule}\" mixes SFTP conditions (sftp_ops, sftp_paths) with commands, regex or ssh_requests; split it in two"),
            });
        }
        let commands = commands
            .map(|globs| {
                if globs.is_empty() {
                    return Err(PolicyProblem {
                        span: None,
                        message: format!(
                            "rule \"{rule}\": commands = [] can never match; remove it or list globs"
                        ),
                    });
                }
                let mut set = GlobSetBuilder::new();
                for glob in globs {
                    let normal = normalize_space(glob.get_ref());
                    let compiled = GlobBuilder::new(&normal)
                        .literal_separator(false)
                        .backslash_escape(true)
                        .build()
                        .map_err(|e| {
                            PolicyProblem::at(
                                glob,
                                format!(
                                    "invalid glob \"{}\" in commands of rule \"{rule}\": {}",
                                    glob.get_ref(),
                                    e.kind()
                                ),
                            )
                        })?;
                    set.add(compiled);
                }
                set.build().map_err(|e| PolicyProblem {
                    span: None,
                    message: format!("rule \"{rule}\": commands: {e}"),
                })
            })
            .transpose()?;
        let regex = regex
            .map(|r| {
                Regex::new(r.get_ref()).map_err(|e| {
                    PolicyProblem::at(
                        r,
                        format!("invalid regex \"{}\" in rule \"{rule}\": {e}", r.get_ref()),
                    )
                })
            })
            .transpose()?;
        let requests = requests
            .map(|names| {
                if names.is_empty() {
                    return Err(PolicyProblem {
                        span: None,
                        message: format!(
                            "rule \"{rule}\": ssh_requests = [] can never match; remove it or list kinds"
                        ),
                    });
                }
                names
                    .iter()
                    .map(|n| {
                        SshKind::from_name(n.get_ref()).ok_or_else(|| {
                            let known: Vec<&str> =
                                SshKind::ALL.iter().map(|k| k.as_str()).collect();
                            PolicyProblem::at(
                                n,
                                format!(
                                    "unknown SSH request \"{}\" in rule \"{rule}\"; known: {}",
                                    n.get_ref(),
                                    known.join(", ")
                                ),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        if let Some(kinds) = &requests {
            if (commands.is_some() || regex.is_some()) && !kinds.contains(&SshKind::Exec) {
                return Err(PolicyProblem {
                    span: None,
                    message: format!(
                        "rule \"{rule}\": commands and regex match exec requests only, but ssh_requests does not name \"exec\""
                    ),
                });
            }
        }
        Ok(SshMatch {
            commands,
            regex,
            requests,
            sftp_ops,
            sftp_paths,
        })
    }
}

/// `text` with runs of whitespace read as one space, trimmed.
fn normalize_space(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The forms of a command line that `commands` globs are tried against (see the module
/// documentation).
fn command_candidates(command: &str) -> impl Iterator<Item = String> + '_ {
    let whole = normalize_space(command);
    let segments: Vec<String> = split_simple_commands(command)
        .into_iter()
        .map(|s| normalize_space(&s))
        .filter(|s| !s.is_empty())
        .collect();
    let mut all = vec![whole];
    for segment in segments {
        if let Some(stripped) = strip_program_dir(&segment) {
            all.push(stripped);
        }
        all.push(segment);
    }
    all.into_iter()
}

/// `/usr/bin/rm -rf x` → `rm -rf x`; `None` when the program has no directory.
fn strip_program_dir(segment: &str) -> Option<String> {
    let (program, rest) = match segment.split_once(' ') {
        Some((p, r)) => (p, Some(r)),
        None => (segment, None),
    };
    let (_, base) = program.rsplit_once('/')?;
    if base.is_empty() {
        return None;
    }
    Some(match rest {
        Some(rest) => format!("{base} {rest}"),
        None => base.to_owned(),
    })
}

/// Splits a command line into simple commands at `;`, `&&`, `||`, `|`, `&` and newlines
/// outside single and double quotes (a backslash escapes the next character outside
/// single quotes). Not a shell parser: enough to find `rm -rf /` in `cd x && rm -rf /`.
fn split_simple_commands(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = command.chars().peekable();
    let (mut single, mut double) = (false, false);
    while let Some(c) = chars.next() {
        match c {
            '\\' if !single => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            '\'' if !double => {
                single = !single;
                current.push(c);
            }
            '"' if !single => {
                double = !double;
                current.push(c);
            }
            ';' | '&' | '|' | '\n' | '(' | ')' | '`' if !single && !double => {
                out.push(std::mem::take(&mut current));
                if matches!(c, '&' | '|') && chars.peek() == Some(&c) {
                    chars.next();
                }
            }
            _ => current.push(c),
        }
    }
    out.push(current);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spanned(v: &str) -> Spanned<String> {
        #[derive(serde::Deserialize)]
        struct W {
            v: Spanned<String>,
        }
        // Rust's string escapes are TOML's for these values.
        toml::from_str::<W>(&format!("v = {v:?}")).unwrap().v
    }

    fn rule(commands: &[&str], regex: Option<&str>, requests: Option<&[&str]>) -> SshMatch {
        let commands: Vec<_> = commands.iter().map(|c| spanned(c)).collect();
        let requests: Option<Vec<_>> = requests.map(|r| r.iter().map(|c| spanned(c)).collect());
        SshMatch::from_raw(
            "r",
            (!commands.is_empty()).then_some(commands.as_slice()),
            regex.map(spanned).as_ref(),
            requests.as_deref(),
            None,
            None,
        )
        .unwrap()
    }

    fn exec(command: &str) -> SshRequest<'_> {
        SshRequest {
            kind: SshKind::Exec,
            command: Some(command),
        }
    }

    #[test]
    fn command_globs_find_a_command_inside_a_line() {
        let r = rule(&["rm -rf *", "systemctl stop *"], None, None);
        assert!(r.matches(&exec("rm -rf /")));
        assert!(r.matches(&exec("  rm   -rf\t/var/lib ")));
        assert!(r.matches(&exec("cd /srv && rm -rf build")));
        assert!(r.matches(&exec("true; /bin/rm -rf /")));
        assert!(r.matches(&exec("echo x | sudo true || systemctl stop nginx")));
        assert!(r.matches(&exec("(rm -rf /tmp/x)")));
        assert!(!r.matches(&exec("rm -r /tmp/x")));
        assert!(
            !r.matches(&exec("echo 'rm -rf /'")),
            "quoted text is not a command"
        );
        assert!(!r.matches(&exec("ls -l")));
        // Exec conditions never match other kinds.
        let shell = SshRequest {
            kind: SshKind::Shell,
            command: None,
        };
        assert!(!r.matches(&shell));
    }

    #[test]
    fn regex_and_kinds() {
        let r = rule(&[], Some(r"^sudo\s"), None);
        assert!(r.matches(&exec("sudo ls")));
        assert!(!r.matches(&exec("ls")));
        let any = rule(&[], None, None);
        assert!(any.matches(&exec("ls")));
        let tunnel = SshRequest {
            kind: SshKind::DirectTcpip,
            command: None,
        };
        assert!(!any.matches(&tunnel), "forwarding needs a rule naming it");
        let fwd = rule(&[], None, Some(&["direct-tcpip"]));
        assert!(fwd.matches(&tunnel));
        assert!(!fwd.matches(&exec("ls")));
        let tunnel_kind = [spanned("tunnel")];
        assert!(SshMatch::from_raw("r", None, None, Some(&tunnel_kind), None, None).is_err());
        let ls = [spanned("ls")];
        let shell = [spanned("shell")];
        assert!(SshMatch::from_raw("r", Some(&ls), None, Some(&shell), None, None).is_err());
    }

    #[test]
    fn sftp_rules_judge_sftp_requests_only() {
        let ops = [spanned("remove"), spanned("write")];
        let paths = [spanned("/etc/**"), spanned("/srv/*.conf")];
        let r = SshMatch::from_raw("r", None, None, None, Some(&ops), Some(&paths)).unwrap();
        let req = |op, path: &'static str| (op, [path]);
        let matches =
            |(op, paths): (&str, [&str; 1])| r.matches_sftp(&SftpRequest { op, paths: &paths });
        assert!(matches(req("remove", "/etc/passwd")));
        assert!(matches(req("write", "/etc/ssh/sshd_config")));
        assert!(matches(req("write", "/srv/app.conf")));
        assert!(
            !matches(req("write", "/srv/sub/app.conf")),
            "* stays in one directory"
        );
        assert!(!matches(req("read", "/etc/passwd")));
        assert!(
            !r.matches(&exec("rm /etc/passwd")),
            "an SFTP rule does not judge execs"
        );
        let any = rule(&[], None, None);
        assert!(!any.matches_sftp(&SftpRequest {
            op: "remove",
            paths: &["/x"]
        }));
        let unknown = [spanned("delete")];
        assert!(SshMatch::from_raw("r", None, None, None, Some(&unknown), None).is_err());
    }
}
