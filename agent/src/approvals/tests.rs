use std::time::Duration;

use super::{server::*, wire::*, *};

fn request(timeout: Duration) -> HoldRequest {
    HoldRequest {
        seq: 3,
        text: "delete from orders where id = 1".into(),
        rule: Some("ask".into()),
        timeout,
    }
}

#[tokio::test]
async fn a_decision_reaches_the_held_statement_once() {
    let r = Registry::new("/run/x.sock".into());
    let hold = r.hold(7, "bot", "db", request(Duration::from_secs(60)));
    let listed = r.list();
    assert_eq!(listed.len(), 1);
    let p = &listed[0];
    assert_eq!((p.id.as_str(), p.session, p.seq), ("a-1", 7, 3));
    assert_eq!(p.rule.as_deref(), Some("ask"));
    assert_eq!(r.show("a-1").unwrap(), *p);
    r.decide(
        "a-1",
        HoldOutcome::Approved {
            by: "uid 0 (root)".into(),
        },
    )
    .unwrap();
    assert!(matches!(hold.await, HoldOutcome::Approved { by } if by == "uid 0 (root)"));
    assert!(r.list().is_empty());
    assert_eq!(
        r.decide("a-1", HoldOutcome::Approved { by: "x".into() }),
        Err(DecideError::NotFound { id: "a-1".into() })
    );
    assert!(r.show("nonsense").is_err());
}

#[tokio::test]
async fn an_undecided_hold_expires_and_is_forgotten() {
    let r = Registry::new("/run/x.sock".into());
    let hold = r.hold(1, "bot", "db", request(Duration::from_millis(50)));
    assert!(matches!(hold.await, HoldOutcome::Expired));
    assert!(r.list().is_empty());
    // A session dropped while it waits takes its request with it.
    let hold = r.hold(1, "bot", "db", request(Duration::from_secs(60)));
    assert_eq!(r.list()[0].id, "a-2");
    drop(hold);
    assert!(r.list().is_empty());
}

#[test]
fn only_root_and_the_approver_group_may_decide() {
    let peer = |uid, gid| Peer { pid: 1, uid, gid };
    assert!(is_approver(&peer(0, 0), &[], None));
    assert!(!is_approver(&peer(1000, 1000), &[], None));
    assert!(is_approver(&peer(1000, 50), &[], Some(50)));
    assert!(is_approver(&peer(1000, 1000), &[4, 50], Some(50)));
    assert!(!is_approver(&peer(1000, 1000), &[4, 51], Some(50)));
}

#[test]
fn supplementary_groups_come_from_proc_status() {
    let status = "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 27 1000 \nNSpid:\t1\n";
    assert_eq!(parse_groups(status), vec![4, 27, 1000]);
    assert_eq!(parse_groups("Groups:\t\n"), Vec::<u32>::new());
    assert_eq!(parse_groups(""), Vec::<u32>::new());
}

#[test]
fn requests_parse_from_one_json_line() {
    let r: Request = serde_json::from_str(r#"{"op":"list"}"#).unwrap();
    assert_eq!(r, Request::List);
    let r: Request = serde_json::from_str(r#"{"op":"deny","id":"a-2","reason":"no"}"#).unwrap();
    assert_eq!(
        r,
        Request::Deny {
            id: "a-2".into(),
            reason: Some("no".into())
        }
    );
    let r: Request = serde_json::from_str(r#"{"op":"approve","id":"a-2"}"#).unwrap();
    assert_eq!(
        r,
        Request::Approve {
            id: "a-2".into(),
            reason: None
        }
    );
    assert!(serde_json::from_str::<Request>(r#"{"op":"drop"}"#).is_err());
    assert!(serde_json::from_str::<Request>(r#"{"op":"show"}"#).is_err());
}

#[test]
fn approvals_keys_are_validated_in_the_agent_table() {
    let config = |keys: &str| {
        crate::config::parse(
            &format!(
                "[agent]\nmode = \"enforce\"\njournal = \"/var/lib/nhi/j.db\"\n{keys}\n\
                 [[target]]\nname = \"db\"\naddress = \"10.0.0.5:5432\"\n"
            ),
            "test.toml",
        )
    };
    let c = config("").unwrap();
    assert_eq!(
        c.agent.approvals_socket,
        PathBuf::from("/run/nhi-agent/approvals.sock")
    );
    assert_eq!(c.agent.approver_group, None);
    let c = config("approvals_socket = \"/run/x/a.sock\"\napprover_group = \"dba\"").unwrap();
    assert_eq!(c.agent.approvals_socket, PathBuf::from("/run/x/a.sock"));
    assert_eq!(
        c.agent.approver_group,
        Some(crate::config::GroupRef::Name("dba".into()))
    );
    let c = config("approver_group = 1234").unwrap();
    assert_eq!(
        c.agent.approver_group,
        Some(crate::config::GroupRef::Gid(1234))
    );
    let e = config("approvals_socket = \"run/a.sock\"").unwrap_err();
    assert!(e.to_string().contains("must be an absolute path"), "{e}");
    let e = config("approver_group = \"\"").unwrap_err();
    assert!(e.to_string().contains("must not be empty"), "{e}");
}

/// The socket server end to end, as the current user (allowed through its own gid when
/// not root).
#[tokio::test]
async fn the_socket_answers_one_json_line_per_request() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/approvals.sock");
    let own_gid = nix::unistd::getegid().as_raw();
    let listener = bind(&path, Some(own_gid)).unwrap();
    let registry = Registry::new(path.clone());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(serve(listener, registry.clone(), Some(own_gid), rx));
    let hold = registry.hold(1, "bot", "db", request(Duration::from_secs(60)));

    let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut ask = async |line: &str| -> Answer {
        w.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap()
    };
    let a = ask(r#"{"op":"list"}"#).await;
    assert!(a.ok);
    assert_eq!(a.pending.unwrap()[0].id, "a-1");
    let a = ask(r#"{"op":"frobnicate"}"#).await;
    assert!(!a.ok && a.error.unwrap().contains("bad request"));
    let a = ask(r#"{"op":"deny","id":"a-1","reason":"no"}"#).await;
    assert!(a.ok, "{a:?}");
    let by = a.by.unwrap();
    assert!(by.starts_with("uid "), "{by}");
    assert!(matches!(hold.await, HoldOutcome::Denied { reason: Some(r), .. } if r == "no"));
    let a = ask(r#"{"op":"show","id":"a-1"}"#).await;
    assert!(!a.ok && a.error.unwrap().contains("no pending request"));
    // A second agent cannot take over a live socket.
    assert!(matches!(bind(&path, None), Err(ServerError::InUse { .. })));
}
