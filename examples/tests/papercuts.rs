//! What a new user of the `crdt-node` prompt tripped over, each fixed: words split on any
//! blanks, stray words refused, `remove` on a missing key refused, a counter past the limit
//! refused, a large set shown as its size and first entries, "peer up" on the first
//! connection.

mod common;

use common::{node_args, trusting_pair, Running};

fn node(dir: &str, peer: Option<&str>) -> Running {
    Running::start(&node_args(dir, peer.as_slice()))
}

/// Sends `command` and returns the first answer line (`ok`, `error` or the object).
fn ask(node: &mut Running, command: &str, answer: &str) -> String {
    node.send(command);
    node.expect(|l| l.starts_with("ok ") || l.starts_with("error") || l.starts_with(answer))
}

#[test]
fn the_prompt_does_what_a_new_user_expects() {
    let (a, b) = (
        tempfile::TempDir::new().unwrap(),
        tempfile::TempDir::new().unwrap(),
    );
    let (a_dir, b_dir) = (a.path().to_str().unwrap(), b.path().to_str().unwrap());
    let (_, b_id) = trusting_pair(a_dir, b_dir);
    let mut first = node(a_dir, None);
    let banner = first.expect(|l| l.contains("listening on"));
    let addr = banner.rsplit(' ').next().unwrap().to_owned();

    // Blanks: a double space or a tab separates words; a value keeps its inner spaces.
    assert!(ask(&mut first, "add  cart   oat milk", "cart").starts_with("ok "));
    assert!(ask(&mut first, "add\tcart\ttea", "cart").starts_with("ok "));
    let cart = ask(&mut first, "get cart", "cart");
    // Elements come in the order of their encodings (a string's length first).
    assert_eq!(cart, "cart = {\"tea\", \"oat milk\"}");

    // Stray words are an error, not ignored: `quit now` does not quit.
    let quit = ask(&mut first, "quit now", "");
    assert!(quit.contains("unexpected \"now\""), "{quit}");
    let get = ask(&mut first, "get cart extra", "cart");
    assert!(get.starts_with("error"), "{get}");

    // Removing from a key that holds nothing is refused (it made an empty set).
    let remove = ask(&mut first, "remove nothing x", "");
    assert!(remove.contains("nothing is not set"), "{remove}");
    assert!(ask(&mut first, "get nothing", "nothing").contains("is not set"));

    // A counter at the limit peers accept: the next increment is refused, not `ok`.
    assert!(ask(&mut first, "incr big 281474976710656", "").starts_with("ok "));
    let over = ask(&mut first, "incr big 1", "");
    assert!(over.contains("would pass the limit"), "{over}");

    // A large set: its size and first entries, unless --all.
    for i in 0..30 {
        assert!(ask(&mut first, &format!("add many e{i:02}"), "").starts_with("ok "));
    }
    let short = ask(&mut first, "get many", "many");
    assert!(short.contains("(30 entries;"), "{short}");
    assert!(!short.contains("e29"), "{short}");
    let long = ask(&mut first, "get many --all", "many");
    assert!(
        long.contains("\"e29\"") && !long.contains("entries"),
        "{long}"
    );

    // "peer up" on the first connection, not only on reconnects.
    let second = node(b_dir, Some(&addr));
    second.expect(|l| l.contains("listening on"));
    first.expect(|l| l == format!("~ peer {b_id} up"));
    first.quit();
    second.quit();
}

/// The data directory need not be repeated on every command: $CRDT_NODE_DIR, else the per-user
/// data directory ($XDG_DATA_HOME/crdt-node, or ~/.local/share/crdt-node).
#[test]
fn the_data_directory_has_a_per_user_default() {
    let home = tempfile::TempDir::new().unwrap();
    let run = |envs: &[(&str, &std::path::Path)], args: &[&str]| {
        let mut command = std::process::Command::new(common::BIN);
        command
            .args(args)
            .env_remove("CRDT_NODE_DIR")
            .env_remove("XDG_DATA_HOME");
        for (name, value) in envs {
            command.env(name, value);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let printed = run(&[("HOME", home.path())], &["init"]);
    assert!(printed.contains("node id:"), "{printed}");
    let default = home.path().join(".local/share/crdt-node");
    if !cfg!(target_os = "macos") {
        assert!(
            default.join("node.key").exists(),
            "no identity in {default:?}"
        );
    }
    // The same identity again, not a new one.
    assert_eq!(run(&[("HOME", home.path())], &["init"]), printed);

    let chosen = home.path().join("chosen");
    let other = run(&[("CRDT_NODE_DIR", &chosen)], &["init"]);
    assert!(chosen.join("node.key").exists());
    assert_ne!(other, printed);
}
