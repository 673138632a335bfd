//! Two `crdt-node` processes in two network namespaces joined by a veth pair: both keep
//! accepting writes while the link is down, and converge once it is up again. Needs root and
//! `ip` (iproute2); where it cannot make namespaces it prints `SKIPPED` on the terminal (past
//! the test harness's capture) and does nothing else.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{cannot_make_namespaces, skipped, trusting_pair, Running, BIN};

/// Namespaces and a veth pair made for this test, removed on drop.
struct Net {
    a: String,
    b: String,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?} failed");
}

impl Net {
    fn new() -> Net {
        let tag = std::process::id() % 100_000;
        let net = Net {
            a: format!("crdt-a-{tag}"),
            b: format!("crdt-b-{tag}"),
        };
        let (va, vb) = (format!("cva{tag}"), format!("cvb{tag}"));
        ip(&["netns", "add", &net.a]);
        ip(&["netns", "add", &net.b]);
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &net.a]);
        ip(&["link", "set", &vb, "netns", &net.b]);
        for (ns, dev, addr) in [
            (&net.a, &va, "10.231.0.1/24"),
            (&net.b, &vb, "10.231.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn link(&self, up: bool) {
        let tag = std::process::id() % 100_000;
        ip(&[
            "-n",
            &self.a,
            "link",
            "set",
            &format!("cva{tag}"),
            if up { "up" } else { "down" },
        ]);
    }

    fn node(&self, ns: &str, args: &[&str]) -> Running {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, BIN]);
        Running::start_command(command, args)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and with it the pair.
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn writes_on_both_sides_of_a_downed_link_converge_when_it_comes_back() {
    if let Some(why) = cannot_make_namespaces() {
        skipped("netns_partition", &why);
        return;
    }
    let net = Net::new();
    let (a, b) = (
        tempfile::TempDir::new().unwrap(),
        tempfile::TempDir::new().unwrap(),
    );
    let (a_dir, b_dir) = (a.path().to_str().unwrap(), b.path().to_str().unwrap());
    trusting_pair(a_dir, b_dir);
    let common = ["--gossip-ms", "100"];
    let mut first = net.node(
        &net.a,
        &[
            &["run", "--listen", "10.231.0.1:4433", "--data-dir", a_dir][..],
            &common,
        ]
        .concat(),
    );
    first.expect(|l| l.contains("listening on"));
    let mut second = net.node(
        &net.b,
        &[
            &[
                "run",
                "--listen",
                "10.231.0.2:4433",
                "--peer",
                "10.231.0.1:4433",
                "--data-dir",
                b_dir,
            ][..],
            &common,
        ]
        .concat(),
    );
    second.expect(|l| l.contains("listening on"));

    second.send("add cart apples");
    first.wait_for("cart", "\"apples\"");

    net.link(false);
    first.send("add cart bread");
    second.send("add cart coffee");
    second.send("remove cart apples");
    std::thread::sleep(Duration::from_secs(1));
    first.send("get cart --all");
    let during = first.expect(|l| l.starts_with("cart "));
    assert!(
        !during.contains("coffee"),
        "the link was down, yet: {during}"
    );

    net.link(true);
    // Exactly these two: the remove of apples, made on the other side, must survive too.
    first.wait_for("cart", "= {\"bread\", \"coffee\"}");
    second.wait_for("cart", "= {\"bread\", \"coffee\"}");
    first.quit();
    second.quit();
}
