//! The prompt on `crdt-node run`'s stdin: a line of words becomes a [`Request`].
//!
//! Words are separated by any run of spaces or tabs; a value (an element, a register value)
//! is the rest of the line after the key, with its inner spaces kept. Commands that take
//! nothing, or only a key, refuse stray words rather than ignore them.

use crate::execute::quoted;
use crate::request::{Level, Request, Wait};

/// What a prompt line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// Nothing (an empty line).
    Nothing,
    /// Print [`HELP`].
    Help,
    /// Stop the node.
    Quit,
    /// Run a request.
    Request(Request),
}

/// The prompt's `help`.
pub const HELP: &str = "\
commands:
  inc KEY [N]           add N (default 1) to a grow-only counter
  incr KEY N | decr KEY N   change an up-down counter
  add KEY ELEMENT       add to a set
  remove KEY ELEMENT    remove from a set
  set KEY VALUE         write a last-writer-wins register
  write KEY VALUE       write a multi-value register (concurrent writes stay visible)
  get KEY [--all]       show an object (a large set or map: its size and first entries)
  get --after TOKEN KEY show it once this node has the write TOKEN names
                        (read-your-writes across nodes; waits up to --timeout)
  get --read N KEY      merge it from N peers first (with writes acknowledged by W
                        replicas, a quorum read when N + 1 + W exceeds the replicas)
  keys                  list every object
  peers                 known peers, up or down, and how far behind
  status                this node's id, address, traffic and catch-up progress
  trust ID | untrust ID admit a peer now, or drop it (fingerprint or node id)
  help                  this text
  quit                  stop the node

A write prints `ok TOKEN` once it is durable on this node. Before its key, a write takes
  --ack N | majority | all   wait until N peers (a majority, all) hold it durably too
  --timeout MS               how long to wait for them (default 5000); on timeout the write
                             stays and keeps spreading, and the error says who has it

The same commands work from another terminal while the node runs (`crdt-node add cart
milk`, `crdt-node --help`).";

/// Parses one prompt line.
pub fn parse(line: &str) -> Result<Line, String> {
    let (command, line) = word(line);
    let (options, line) = options(command, line)?;
    let (key, rest) = word(line);
    let key = (!key.is_empty()).then(|| key.to_owned());
    let rest = (!rest.is_empty()).then(|| rest.to_owned());
    let need = |what: Option<String>, name: &str| {
        what.ok_or(format!("{command}: missing {name} (try `help`)"))
    };
    let no_more = |what: &Option<String>, after: &str| match what {
        Some(extra) => Err(format!(
            "{command}: unexpected {} after {after}",
            quoted(extra)
        )),
        None => Ok(()),
    };
    let number = |what: Option<String>, default: Option<u64>| -> Result<u64, String> {
        match (what, default) {
            (Some(text), _) => text
                .trim()
                .parse()
                .map_err(|_| format!("{command}: not a number (0 to 2^64 - 1): {text}")),
            (None, Some(n)) => Ok(n),
            (None, None) => Err(format!("{command}: missing a number")),
        }
    };
    if matches!(
        command,
        "help" | "quit" | "exit" | "keys" | "peers" | "status"
    ) {
        no_more(&key, command)?;
    }
    let wait = options.wait;
    let request = match command {
        "" => return Ok(Line::Nothing),
        "help" => return Ok(Line::Help),
        "quit" | "exit" => return Ok(Line::Quit),
        "keys" => Request::Keys {},
        "peers" => Request::Peers {},
        "status" => Request::Status {},
        "trust" | "untrust" => {
            let peer = need(key, "ID")?;
            no_more(&rest, "the id")?;
            if command == "trust" {
                Request::Trust { peer }
            } else {
                Request::Untrust { peer }
            }
        }
        "get" => {
            let key = need(key, "KEY")?;
            let all = match rest.as_deref() {
                Some("--all") => true,
                None => false,
                Some(extra) => {
                    return Err(format!("get: unexpected {} after the key", quoted(extra)))
                }
            };
            Request::Get {
                key,
                all,
                after: options.after,
                read: options.read,
                timeout_ms: wait.timeout_ms,
            }
        }
        "inc" => Request::Inc {
            key: need(key, "KEY")?,
            by: number(rest, Some(1))?,
            wait,
        },
        "incr" => Request::Incr {
            key: need(key, "KEY")?,
            by: number(rest, None)?,
            wait,
        },
        "decr" => Request::Decr {
            key: need(key, "KEY")?,
            by: number(rest, None)?,
            wait,
        },
        "add" | "remove" | "set" | "write" => {
            let key = need(key, "KEY")?;
            let value = need(
                rest,
                if command == "add" || command == "remove" {
                    "ELEMENT"
                } else {
                    "VALUE"
                },
            )?;
            match command {
                "add" => Request::Add { key, value, wait },
                "remove" => Request::Remove { key, value, wait },
                "set" => Request::Set { key, value, wait },
                _ => Request::Write { key, value, wait },
            }
        }
        other => return Err(format!("unknown command {} (try `help`)", quoted(other))),
    };
    Ok(Line::Request(request))
}

/// The first word of `line` and the rest, both without surrounding blanks.
pub fn word(line: &str) -> (&str, &str) {
    let line = line.trim();
    match line.split_once(char::is_whitespace) {
        Some((first, rest)) => (first, rest.trim_start()),
        None => (line, ""),
    }
}

/// A command's `--ack`, `--timeout`, `--read` and `--after` options.
#[derive(Default)]
struct Options {
    wait: Wait,
    read: usize,
    after: Option<String>,
}

/// Takes the options at the start of `line`; returns them and the rest.
fn options<'a>(command: &str, mut line: &'a str) -> Result<(Options, &'a str), String> {
    let mut options = Options::default();
    while let Some(rest) = line.strip_prefix("--") {
        let (name, rest) = word(rest);
        let (value, rest) = word(rest);
        let bad = || format!("{command}: bad value for --{name}: {}", quoted(value));
        match name {
            "ack" => options.wait.ack = value.parse::<Level>().map_err(|_| bad())?,
            "read" => options.read = value.parse().map_err(|_| bad())?,
            "timeout" => options.wait.timeout_ms = Some(value.parse().map_err(|_| bad())?),
            "after" => options.after = Some(value.to_owned()),
            other => return Err(format!("{command}: unknown option --{other} (try `help`)")),
        }
        line = rest;
    }
    Ok((options, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_split_on_any_blanks() {
        assert_eq!(word("  add\tcart   milk  "), ("add", "cart   milk"));
        assert_eq!(word("quit"), ("quit", ""));
        assert_eq!(word(""), ("", ""));
    }

    #[test]
    fn a_line_becomes_a_request() {
        assert_eq!(
            parse("add  cart   oat milk"),
            Ok(Line::Request(Request::Add {
                key: "cart".into(),
                value: "oat milk".into(),
                wait: Wait::default()
            }))
        );
        assert!(parse("quit now").is_err());
        assert!(parse("inc n 18446744073709551616").is_err());
        assert!(parse("add cart").is_err());
        assert_eq!(parse("   "), Ok(Line::Nothing));
    }
}
