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
