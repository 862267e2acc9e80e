//! What the agent knows about Redis commands: which arguments are keys, which commands
//! have subcommands. Redis's own key specs (`COMMAND INFO`) for the common commands;
//! anything else is [`Keys::Unknown`], which rules treat conservatively (see
//! `policy::redis`).
use bytes::Bytes;

/// The key arguments of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keys {
    /// The indexes (into the arguments, the name being 0) of its keys; empty for a
    /// command that names no key.
    Known(Vec<usize>),
    /// The agent does not know which arguments are keys.
    Unknown,
}

impl Keys {
    /// The key arguments themselves, `None` when unknown.
    pub fn of<'a>(&self, args: &'a [Bytes]) -> Option<Vec<&'a Bytes>> {
        match self {
            Keys::Known(ix) => Some(ix.iter().filter_map(|&i| args.get(i)).collect()),
            Keys::Unknown => None,
        }
    }
}

/// Commands whose first argument is a subcommand (`CONFIG SET`, `CLIENT KILL`, ...).
const WITH_SUBCOMMANDS: &[&str] = &[
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "DEBUG", "FUNCTION", "LATENCY", "MEMORY",
    "MODULE", "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO",
];

/// Whether `name` (upper case) has subcommands.
pub fn has_subcommand(name: &str) -> bool {
    WITH_SUBCOMMANDS.contains(&name)
}

/// Commands that name no key.
const NO_KEYS: &[&str] = &[
    "ACL",
    "AUTH",
    "BGREWRITEAOF",
    "BGSAVE",
    "CLIENT",
    "CLUSTER",
    "COMMAND",
    "CONFIG",
    "DBSIZE",
    "DEBUG",
    "DISCARD",
    "ECHO",
    "EXEC",
    "FAILOVER",
    "FLUSHALL",
    "FLUSHDB",
    "FUNCTION",
    "HELLO",
    "INFO",
    "KEYS",
    "LASTSAVE",
    "LATENCY",
    "LOLWUT",
    "MODULE",
    "MONITOR",
    "MULTI",
    "PING",
    "PSUBSCRIBE",
    "PUBLISH",
    "PUBSUB",
    "PUNSUBSCRIBE",
    "QUIT",
    "RANDOMKEY",
    "READONLY",
    "READWRITE",
    "REPLICAOF",
    "RESET",
    "ROLE",
    "SAVE",
    "SCAN",
    "SCRIPT",
    "SELECT",
    "SHUTDOWN",
    "SLAVEOF",
    "SLOWLOG",
    "SPUBLISH",
    "SSUBSCRIBE",
    "SUBSCRIBE",
    "SUNSUBSCRIBE",
    "SWAPDB",
    "SYNC",
    "PSYNC",
    "TIME",
    "UNSUBSCRIBE",
    "UNWATCH",
    "WAIT",
];

/// Commands whose only key is their first argument.
const FIRST_KEY: &[&str] = &[
    "APPEND",
    "BITCOUNT",
    "BITFIELD",
    "BITFIELD_RO",
    "BITPOS",
    "DECR",
    "DECRBY",
    "DUMP",
    "EXPIRE",
    "EXPIREAT",
    "EXPIRETIME",
    "GEOADD",
    "GEODIST",
    "GEOHASH",
    "GEOPOS",
    "GEORADIUS_RO",
    "GEORADIUSBYMEMBER_RO",
    "GEOSEARCH",
    "GET",
    "GETBIT",
    "GETDEL",
    "GETEX",
    "GETRANGE",
    "GETSET",
    "HDEL",
    "HEXISTS",
    "HGET",
    "HGETALL",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HKEYS",
    "HLEN",
    "HMGET",
    "HMSET",
    "HRANDFIELD",
    "HSCAN",
    "HSET",
    "HSETNX",
    "HSTRLEN",
    "HVALS",
    "INCR",
    "INCRBY",
    "INCRBYFLOAT",
    "LINDEX",
    "LINSERT",
    "LLEN",
    "LPOP",
    "LPOS",
    "LPUSH",
    "LPUSHX",
    "LRANGE",
    "LREM",
    "LSET",
    "LTRIM",
    "MOVE",
    "PERSIST",
    "PEXPIRE",
    "PEXPIREAT",
    "PEXPIRETIME",
    "PFADD",
    "PSETEX",
    "PTTL",
    "RESTORE",
    "RPOP",
    "RPUSH",
    "RPUSHX",
    "SADD",
    "SCARD",
    "SET",
    "SETBIT",
    "SETEX",
    "SETNX",
    "SETRANGE",
    "SISMEMBER",
    "SMEMBERS",
    "SMISMEMBER",
    "SPOP",
    "SRANDMEMBER",
    "SREM",
    "SSCAN",
    "STRLEN",
    "SUBSTR",
    "TTL",
    "TYPE",
    "XACK",
    "XADD",
    "XAUTOCLAIM",
    "XCLAIM",
    "XDEL",
    "XLEN",
    "XPENDING",
    "XRANGE",
    "XREVRANGE",
    "XSETID",
    "XTRIM",
    "ZADD",
    "ZCARD",
    "ZCOUNT",
    "ZINCRBY",
    "ZLEXCOUNT",
    "ZMSCORE",
    "ZPOPMAX",
    "ZPOPMIN",
    "ZRANDMEMBER",
    "ZRANGE",
    "ZRANGEBYLEX",
    "ZRANGEBYSCORE",
    "ZRANK",
    "ZREM",
    "ZREMRANGEBYLEX",
    "ZREMRANGEBYRANK",
    "ZREMRANGEBYSCORE",
    "ZREVRANGE",
    "ZREVRANGEBYLEX",
    "ZREVRANGEBYSCORE",
    "ZREVRANK",
    "ZSCAN",
    "ZSCORE",
];

/// Commands whose arguments are all keys.
const ALL_KEYS: &[&str] = &[
    "DEL",
    "EXISTS",
    "MGET",
    "PFCOUNT",
    "PFMERGE",
    "SDIFF",
    "SDIFFSTORE",
    "SINTER",
    "SINTERSTORE",
    "SUNION",
    "SUNIONSTORE",
    "TOUCH",
    "UNLINK",
    "WATCH",
];

/// Commands whose first two arguments are keys.
const TWO_KEYS: &[&str] = &[
    "BLMOVE",
    "BRPOPLPUSH",
    "COPY",
    "GEOSEARCHSTORE",
    "LCS",
    "LMOVE",
    "RENAME",
    "RENAMENX",
    "RPOPLPUSH",
    "SMOVE",
    "ZRANGESTORE",
];

/// Blocking pops: every argument but the last (the timeout) is a key.
const ALL_BUT_LAST: &[&str] = &["BLPOP", "BRPOP", "BZPOPMAX", "BZPOPMIN"];

/// The key arguments of `args` (the name first, any case).
pub fn keys(args: &[Bytes]) -> Keys {
    let Some(name) = args.first() else {
        return Keys::Known(Vec::new());
    };
    let name = String::from_utf8_lossy(name).to_ascii_uppercase();
    let n = args.len();
    let name = name.as_str();
    let range = |from: usize, to: usize| Keys::Known((from..to.min(n)).collect());
    // A `numkeys` argument at `at`, the keys right after it.
    let numkeys = |at: usize| -> Keys {
        let Some(count) = args
            .get(at)
            .and_then(|a| std::str::from_utf8(a).ok())
            .and_then(|t| t.parse::<usize>().ok())
        else {
            // Redis refuses it too; nothing to judge but the name.
            return Keys::Unknown;
        };
        if at + 1 + count > n {
            return Keys::Unknown;
        }
        Keys::Known((at + 1..at + 1 + count).collect())
    };
    if NO_KEYS.contains(&name) {
        return Keys::Known(Vec::new());
    }
    if FIRST_KEY.contains(&name) {
        return range(1, 2);
    }
    if ALL_KEYS.contains(&name) {
        return range(1, n);
    }
    if TWO_KEYS.contains(&name) {
        return range(1, 3);
    }
    if ALL_BUT_LAST.contains(&name) {
        return range(1, n.saturating_sub(1));
    }
    match name {
        "MSET" | "MSETNX" => Keys::Known((1..n).step_by(2).collect()),
        "BITOP" => range(2, n),
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => numkeys(2),
        "ZUNION" | "ZINTER" | "ZDIFF" | "ZINTERCARD" | "SINTERCARD" | "LMPOP" | "ZMPOP" => {
            numkeys(1)
        }
        "BLMPOP" | "BZMPOP" => numkeys(2),
        "ZUNIONSTORE" | "ZINTERSTORE" | "ZDIFFSTORE" => match numkeys(2) {
            Keys::Known(mut k) => {
                k.insert(0, 1);
                Keys::Known(k)
            }
            Keys::Unknown => Keys::Unknown,
        },
        "OBJECT" | "MEMORY" | "XINFO" | "XGROUP" => {
            let sub = args
                .get(1)
                .map(|s| String::from_utf8_lossy(s).to_ascii_uppercase())
                .unwrap_or_default();
            match sub.as_str() {
                "HELP" | "STATS" | "DOCTOR" | "MALLOC-STATS" | "PURGE" => Keys::Known(Vec::new()),
                _ if n > 2 => Keys::Known(vec![2]),
                _ => Keys::Known(Vec::new()),
            }
        }
        "XREAD" | "XREADGROUP" => {
            // The keys are the first half of what follows STREAMS.
            let Some(at) = args.iter().position(|a| a.eq_ignore_ascii_case(b"STREAMS")) else {
                return Keys::Unknown;
            };
            let rest = n - at - 1;
            if rest == 0 || !rest.is_multiple_of(2) {
                return Keys::Unknown;
            }
            range(at + 1, at + 1 + rest / 2)
        }
        _ => Keys::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<Bytes> {
        line.split(' ')
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    fn key_names(line: &str) -> Option<Vec<String>> {
        let a = args(line);
        keys(&a).of(&a).map(|k| {
            k.into_iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect()
        })
    }

    #[test]
    fn key_positions_of_common_commands() {
        assert_eq!(key_names("get session:1").unwrap(), ["session:1"]);
        assert_eq!(key_names("SET k v EX 10").unwrap(), ["k"]);
        assert_eq!(key_names("MGET a b c").unwrap(), ["a", "b", "c"]);
        assert_eq!(key_names("MSET a 1 b 2").unwrap(), ["a", "b"]);
        assert_eq!(key_names("DEL a b").unwrap(), ["a", "b"]);
        assert_eq!(key_names("HSET h f v").unwrap(), ["h"]);
        assert_eq!(key_names("BLPOP a b 0").unwrap(), ["a", "b"]);
        assert_eq!(key_names("EVAL s 2 k1 k2 a1").unwrap(), ["k1", "k2"]);
        assert_eq!(key_names("ZUNIONSTORE d 2 a b").unwrap(), ["d", "a", "b"]);
        assert_eq!(
            key_names("XREAD COUNT 2 STREAMS s1 s2 0 0").unwrap(),
            ["s1", "s2"]
        );
        assert_eq!(key_names("OBJECT ENCODING k").unwrap(), ["k"]);
        assert!(key_names("FLUSHALL").unwrap().is_empty());
        assert!(key_names("PUBLISH ch msg").unwrap().is_empty());
        assert_eq!(
            key_names("EVAL s 5 k1"),
            None,
            "numkeys beyond the arguments"
        );
        assert_eq!(key_names("SORT k BY w_*"), None, "SORT reads other keys");
        assert_eq!(key_names("MYMODULE.CMD x"), None);
    }
}
