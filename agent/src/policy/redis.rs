//! The Redis conditions of a `[[policy.rule]]`: `commands` and `keys`.
//!
//! ```toml
//! [[policy.rule]]
//! name = "no-admin"
//! verdict = "deny"
//! commands = ["FLUSHALL", "FLUSHDB", "KEYS", "CONFIG", "DEBUG", "MODULE", "ACL", "EVAL*"]
//!
//! [[policy.rule]]
//! name = "sessions-need-a-human"
//! verdict = "approve"
//! commands = ["DEL", "UNLINK"]
//! keys = ["session:*"]
//! ```
//!
//! `commands` is the key SSH rules use for command lines (see [`super::ssh`]); on a
//! `protocol = "redis"` target it is read as globs over the *command name*,
//! case-insensitive (`EVAL*` matches `EVAL`, `EVALSHA`, `EVAL_RO`), each also tried
//! against the name and its subcommand for commands that have one (`CONFIG` matches
//! every `CONFIG ...`, `"CONFIG SET"` only `CONFIG SET`). The same rule judges exec
//! requests on SSH targets by its SSH meaning.
//!
//! `keys` (Redis only) are globs over the command's key arguments, case-sensitive and
//! byte-exact (`*` spans `:`); a rule matches when any key matches. Which arguments are
//! keys the agent knows for the common commands (`protocol::redis::names`: Redis's key
//! specs). For a command whose keys it does not know (`SORT`, a module's command, an
//! `EVAL` whose `numkeys` does not fit), it is conservative: a `deny` or `approve` rule
//! tries every argument as a key, an `allow` rule never matches.
//!
//! A rule with no condition matches every command. `MONITOR` is always refused: its
//! stream is other clients' commands, which cannot be paired with keys to mask them.
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};
use toml::Spanned;

use super::{PolicyProblem, Verdict};

/// The rule name a refused `MONITOR` is journaled and answered with.
pub const MONITOR_RULE: &str = "MONITOR is not allowed through the agent";

/// One Redis command as rules see it.
#[derive(Debug, Clone, Copy)]
pub struct RedisCommand<'a> {
    /// The command's name, upper case.
    pub name: &'a str,
    /// `NAME SUBCOMMAND` (upper case) for commands that have subcommands.
    pub with_subcommand: Option<&'a str>,
    /// Its key arguments; `None`: the agent does not know which they are.
    pub keys: Option<&'a [&'a [u8]]>,
    /// Every argument after the name (tried as keys when `keys` is `None`).
    pub args: &'a [&'a [u8]],
}

/// The Redis conditions of one rule; each one set must hold.
#[derive(Debug, Clone, Default)]
pub struct RedisMatch {
    commands: Option<GlobSet>,
    keys: Option<GlobSet>,
}

impl RedisMatch {
    /// Whether the rule sets `keys` (a condition only Redis has).
    pub fn has_own(&self) -> bool {
        self.keys.is_some()
    }

    /// Whether the rule judges Redis commands at all (`commands` or `keys`).
    pub fn is_set(&self) -> bool {
        self.commands.is_some() || self.keys.is_some()
    }

    /// Whether this rule, whose verdict is `verdict`, matches `command`.
    pub fn matches(&self, command: &RedisCommand<'_>, verdict: Verdict) -> bool {
        if let Some(globs) = &self.commands {
            let by_name = globs.is_match(command.name);
            let by_sub = command.with_subcommand.is_some_and(|s| globs.is_match(s));
            if !by_name && !by_sub {
                return false;
            }
        }
        if let Some(globs) = &self.keys {
            let matches =
                |key: &&[u8]| globs.is_match_candidate(&Candidate::new(OsStr::from_bytes(key)));
            let hit = match command.keys {
                Some(keys) => keys.iter().any(matches),
                None if verdict == Verdict::Allow => false,
                None => command.args.iter().any(matches),
            };
            if !hit {
                return false;
            }
        }
        true
    }

    /// Validates the Redis keys of rule `rule` (`commands` is shared with SSH).
    pub fn from_raw(
        rule: &str,
        commands: Option<&[Spanned<String>]>,
        keys: Option<&[Spanned<String>]>,
    ) -> Result<RedisMatch, PolicyProblem> {
        let commands = commands
            .map(|globs| compile(rule, "commands", globs, true))
            .transpose()?;
        let keys = keys
            .map(|globs| compile(rule, "keys", globs, false))
            .transpose()?;
        Ok(RedisMatch { commands, keys })
    }
}

fn compile(
    rule: &str,
    key: &str,
    globs: &[Spanned<String>],
    command: bool,
) -> Result<GlobSet, PolicyProblem> {
    if globs.is_empty() {
        return Err(PolicyProblem {
            span: None,
            message: format!(
                "rule \"{rule}\": {key} = [] can never match; remove it or list globs"
            ),
        });
    }
    let mut set = GlobSetBuilder::new();
    for glob in globs {
        // Command globs: one space between a name and its subcommand.
        let text = if command {
            glob.get_ref()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            glob.get_ref().clone()
        };
        if text.is_empty() {
            return Err(PolicyProblem::at(
                glob,
                format!("empty glob in {key} of rule \"{rule}\""),
            ));
        }
        let compiled = GlobBuilder::new(&text)
            .case_insensitive(command)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|e| {
                PolicyProblem::at(
                    glob,
                    format!(
                        "invalid glob \"{}\" in {key} of rule \"{rule}\": {}",
                        glob.get_ref(),
                        e.kind()
                    ),
                )
            })?;
        set.add(compiled);
    }
    set.build().map_err(|e| PolicyProblem {
        span: None,
        message: format!("rule \"{rule}\": {key}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spanned(v: &str) -> Spanned<String> {
        #[derive(serde::Deserialize)]
        struct W {
            v: Spanned<String>,
        }
        toml::from_str::<W>(&format!("v = {v:?}")).unwrap().v
    }

    fn rule(commands: &[&str], keys: &[&str]) -> RedisMatch {
        let c: Vec<_> = commands.iter().map(|c| spanned(c)).collect();
        let k: Vec<_> = keys.iter().map(|c| spanned(c)).collect();
        RedisMatch::from_raw(
            "r",
            (!c.is_empty()).then_some(c.as_slice()),
            (!k.is_empty()).then_some(k.as_slice()),
        )
        .unwrap()
    }

    fn cmd<'a>(
        name: &'a str,
        sub: Option<&'a str>,
        keys: Option<&'a [&'a [u8]]>,
        args: &'a [&'a [u8]],
    ) -> RedisCommand<'a> {
        RedisCommand {
            name,
            with_subcommand: sub,
            keys,
            args,
        }
    }

    #[test]
    fn command_globs_are_case_insensitive_and_see_subcommands() {
        let r = rule(&["flushall", "EVAL*", "CONFIG SET"], &[]);
        assert!(r.matches(&cmd("FLUSHALL", None, Some(&[]), &[]), Verdict::Deny));
        assert!(r.matches(&cmd("EVALSHA", None, Some(&[]), &[]), Verdict::Deny));
        assert!(r.matches(
            &cmd("CONFIG", Some("CONFIG SET"), Some(&[]), &[]),
            Verdict::Deny
        ));
        assert!(!r.matches(
            &cmd("CONFIG", Some("CONFIG GET"), Some(&[]), &[]),
            Verdict::Deny
        ));
        assert!(!r.matches(&cmd("GET", None, Some(&[b"k"]), &[b"k"]), Verdict::Deny));
        let all_config = rule(&["CONFIG"], &[]);
        assert!(all_config.matches(
            &cmd("CONFIG", Some("CONFIG GET"), Some(&[]), &[]),
            Verdict::Deny
        ));
    }

    #[test]
    fn key_globs_and_unknown_keys() {
        let r = rule(&[], &["session:*"]);
        let keys: &[&[u8]] = &[b"user:1", b"session:abc"];
        assert!(r.matches(&cmd("DEL", None, Some(keys), keys), Verdict::Deny));
        assert!(!r.matches(
            &cmd("GET", None, Some(&[b"user:1"]), &[b"user:1"]),
            Verdict::Deny
        ));
        assert!(
            !r.matches(
                &cmd("GET", None, Some(&[b"Session:1"]), &[b"Session:1"]),
                Verdict::Deny
            ),
            "keys are case-sensitive"
        );
        // Unknown key positions: every argument for deny/approve, nothing for allow.
        let args: &[&[u8]] = &[b"x", b"session:9"];
        assert!(r.matches(&cmd("SORT", None, None, args), Verdict::Deny));
        assert!(r.matches(&cmd("SORT", None, None, args), Verdict::Approve));
        assert!(!r.matches(&cmd("SORT", None, None, args), Verdict::Allow));
        // Both conditions must hold.
        let both = rule(&["DEL"], &["session:*"]);
        assert!(both.matches(&cmd("DEL", None, Some(keys), keys), Verdict::Deny));
        assert!(!both.matches(&cmd("UNLINK", None, Some(keys), keys), Verdict::Deny));
        assert!(RedisMatch::from_raw("r", None, Some(&[])).is_err());
    }
}
