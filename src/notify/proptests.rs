//! Property tests of the sd_notify message parser against a model.

use proptest::prelude::*;

use super::{parse, Message};

/// What sd_notify(3) says the lines mean, written the plain way: only an
/// exact `READY=1` counts, the last `STATUS=` wins, the last `MAINPID=`
/// that is a pid (decimal, 1 to i32::MAX) wins and any other is refused,
/// everything else is kept in order.
fn model(lines: &[String]) -> Message {
    let mut m = Message::default();
    for line in lines.iter().filter(|l| !l.is_empty()) {
        if line == "READY=1" {
            m.ready = true;
        } else if let Some(s) = line.strip_prefix("STATUS=") {
            m.status = Some(s.to_string());
        } else if let Some(v) = line.strip_prefix("MAINPID=") {
            let pid = match v.chars().all(|c| c.is_ascii_digit()) {
                true => v.parse::<u64>().ok().filter(|p| (1..=i32::MAX as u64).contains(p)),
                false => None,
            };
            match pid {
                Some(p) => m.main_pid = Some(p as i32),
                None => m.refused.push(line.clone()),
            }
        } else {
            m.other.push(line.clone());
        }
    }
    m
}

/// One line: mostly KEY=VALUE with keys graceexec knows or nearly knows,
/// some without '=' or empty. Never a newline inside.
fn line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("READY"),
        Just("STATUS"),
        Just("RELOADING"),
        Just("MAINPID"),
        Just("ready"),
        Just("XREADY"),
        Just("READY "),
        Just(""),
    ];
    let value = prop_oneof![
        Just("1".to_string()),
        Just("0".to_string()),
        Just("-3".to_string()),
        Just("2147483648".to_string()),
        "[0-9]{1,11}",
        "[^\n]{0,12}",
    ];
    prop_oneof![
        4 => (key, value).prop_map(|(k, v)| format!("{k}={v}")),
        1 => "[^\n=]{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn agrees_with_the_model(
        lines in prop::collection::vec(line(), 0..8),
        trailing_newline in any::<bool>(),
    ) {
        let mut datagram = lines.join("\n");
        if trailing_newline {
            datagram.push('\n');
        }
        prop_assert_eq!(parse(datagram.as_bytes()), model(&lines), "{:?}", datagram);
    }

    #[test]
    fn invalid_utf8_never_makes_ready(junk in prop::collection::vec(0x80u8..=0xff, 1..4)) {
        // A READY=1 with stray bytes in it is not READY=1.
        let mut datagram = b"READY=1".to_vec();
        datagram.extend_from_slice(&junk);
        prop_assert!(!parse(&datagram).ready);
    }
}
