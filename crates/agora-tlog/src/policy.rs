//! c2sp.org/tlog-policy: trusted logs, witnesses, groups and the quorum.

use std::collections::{HashMap, HashSet};

use crate::checkpoint::SignedCheckpoint;
use crate::note::{KeyType, Vkey};
use crate::{Error, Result};

/// Most `log` lines a policy may have. This and the two below are implementation limits; the
/// spec recommends supporting at least 32 of each.
pub const MAX_LOGS: usize = 256;
/// Most `witness` lines.
pub const MAX_WITNESSES: usize = 256;
/// Most `group` lines.
pub const MAX_GROUPS: usize = 256;
/// Largest policy file accepted, in bytes.
pub const MAX_POLICY_LEN: usize = 1 << 20;

/// A trusted log: `log <vkey> [<url>]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyLog {
    /// Its Ed25519 (0x01) key; the key name is the origin of its checkpoints.
    pub vkey: Vkey,
    /// Where to reach it, if given (unchecked).
    pub url: Option<String>,
}

/// A witness: `witness <name> <vkey> [<url>]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyWitness {
    /// Opaque octets; only meaningful inside the policy.
    pub name: Vec<u8>,
    /// Its cosignature/v1 (0x04) key.
    pub vkey: Vkey,
    /// Where to reach it, if given (unchecked).
    pub url: Option<String>,
}

/// A member of a group or the quorum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Member {
    /// Index into [`Policy::witnesses`].
    Witness(usize),
    /// Index into [`Policy::groups`] (in a group's members, always an earlier group).
    Group(usize),
}

/// A group: `group <name> <all|any|k> <name>...`, satisfied when `threshold` members are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// Opaque octets; only meaningful inside the policy.
    pub name: Vec<u8>,
    /// Members that must be satisfied, `1..=members.len()` (`all` and `any` resolved).
    pub threshold: usize,
    /// The members, each defined on an earlier line and listed in at most one group.
    pub members: Vec<Member>,
}

/// The `quorum` line: what must cosign a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quorum {
    /// `quorum none`: no cosignatures are required.
    None,
    /// This witness or group must be satisfied.
    Member(Member),
}

/// A parsed tlog-policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The trusted logs, in file order.
    pub logs: Vec<PolicyLog>,
    /// The witnesses, in file order (indexed by [`Member::Witness`]).
    pub witnesses: Vec<PolicyWitness>,
    /// The groups, in file order (indexed by [`Member::Group`]).
    pub groups: Vec<Group>,
    /// The quorum a checkpoint's cosignatures must satisfy.
    pub quorum: Quorum,
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn utf8<'a>(b: &'a [u8], line: usize, what: &str) -> Result<&'a str> {
    std::str::from_utf8(b).map_err(|_| Error::Policy {
        line,
        msg: format!("{what} is not valid UTF-8"),
    })
}

/// A policy error on `line` (0: the file as a whole).
fn err(line: usize, msg: &str) -> Error {
    Error::Policy {
        line,
        msg: msg.to_string(),
    }
}

/// The whole-file checks done before any line is parsed: size, control characters and the
/// final newline.
fn check_bytes(data: &[u8]) -> Result<()> {
    if data.len() > MAX_POLICY_LEN {
        return Err(err(0, "policy file too large"));
    }
    if let Some(pos) = data
        .iter()
        .position(|&b| b != b'\t' && b != b'\n' && (b < 0x20 || b == 0x7f))
    {
        let line = data[..pos].iter().filter(|&&b| b == b'\n').count() + 1;
        return Err(err(
            line,
            "control character (only tab and newline are allowed)",
        ));
    }
    if !data.is_empty() && !data.ends_with(b"\n") {
        let line = data.iter().filter(|&&b| b == b'\n').count() + 1;
        return Err(err(line, "the last line is not terminated by a newline"));
    }
    Ok(())
}

/// Parse a vkey field, mapping its error to a policy error on `line`.
fn parse_vkey(vkey: &[u8], line: usize) -> Result<Vkey> {
    Vkey::parse(utf8(vkey, line, "vkey")?).map_err(|e| Error::Policy {
        line,
        msg: e.to_string(),
    })
}

/// An optional URL field as a string.
fn parse_url(url: Option<&&[u8]>, line: usize) -> Result<Option<String>> {
    url.map(|u| utf8(u, line, "URL").map(str::to_string))
        .transpose()
}

/// A group's threshold: `all`, `any`, or a decimal `k` with 1 <= k <= n.
fn parse_threshold(threshold: &[u8], n: usize, line: usize) -> Result<usize> {
    Ok(match threshold {
        b"all" => n,
        b"any" => 1,
        t => std::str::from_utf8(t)
            .ok()
            .and_then(crate::parse_decimal)
            .and_then(|k| usize::try_from(k).ok())
            .filter(|k| (1..=n).contains(k))
            .ok_or_else(|| {
                err(
                    line,
                    "threshold must be all, any, or a decimal k with 1 <= k <= n",
                )
            })?,
    })
}

/// The state of a policy being parsed, one directive at a time.
#[derive(Default)]
struct PolicyParser {
    logs: Vec<PolicyLog>,
    witnesses: Vec<PolicyWitness>,
    groups: Vec<Group>,
    names: HashMap<Vec<u8>, Member>,
    used_as_member: HashSet<Vec<u8>>,
    quorum: Option<Quorum>,
}

impl PolicyParser {
    /// One non-empty, non-comment line: `kw` followed by `args`.
    fn directive(&mut self, line: usize, kw: &[u8], args: &[&[u8]]) -> Result<()> {
        match kw {
            b"log" => self.log(line, args),
            b"witness" => self.witness(line, args),
            b"group" => self.group(line, args),
            b"quorum" => self.quorum(line, args),
            _ => Err(err(line, "unknown keyword")),
        }
    }

    /// `log <vkey> [<url>]`
    fn log(&mut self, line: usize, args: &[&[u8]]) -> Result<()> {
        let (vkey, url) = match args {
            [v] => (v, None),
            [v, u] => (v, Some(u)),
            _ => return Err(err(line, "expected: log <vkey> [<url>]")),
        };
        let vkey = parse_vkey(vkey, line)?;
        if vkey.kind != KeyType::Ed25519 {
            return Err(err(line, "a log key must be an Ed25519 (0x01) vkey"));
        }
        if self.logs.iter().any(|l| l.vkey.key == vkey.key) {
            return Err(err(line, "duplicate log key"));
        }
        if self.logs.len() == MAX_LOGS {
            return Err(err(line, "too many logs"));
        }
        let url = parse_url(url, line)?;
        self.logs.push(PolicyLog { vkey, url });
        Ok(())
    }

    /// `witness <name> <vkey> [<url>]`
    fn witness(&mut self, line: usize, args: &[&[u8]]) -> Result<()> {
        let (name, vkey, url) = match args {
            [n, v] => (n, v, None),
            [n, v, u] => (n, v, Some(u)),
            _ => return Err(err(line, "expected: witness <name> <vkey> [<url>]")),
        };
        if *name == b"none" || self.names.contains_key(*name) {
            return Err(err(line, "name already defined"));
        }
        let vkey = parse_vkey(vkey, line)?;
        if vkey.kind != KeyType::CosignatureV1 {
            return Err(err(
                line,
                "a witness key must be a cosignature/v1 (0x04) vkey",
            ));
        }
        if self.witnesses.iter().any(|w| w.vkey.key == vkey.key) {
            return Err(err(line, "duplicate witness key"));
        }
        if self.witnesses.len() == MAX_WITNESSES {
            return Err(err(line, "too many witnesses"));
        }
        let url = parse_url(url, line)?;
        self.names
            .insert(name.to_vec(), Member::Witness(self.witnesses.len()));
        self.witnesses.push(PolicyWitness {
            name: name.to_vec(),
            vkey,
            url,
        });
        Ok(())
    }

    /// `group <name> <all|any|k> <name>...`
    fn group(&mut self, line: usize, args: &[&[u8]]) -> Result<()> {
        let [name, threshold, members @ ..] = args else {
            return Err(err(line, "expected: group <name> <all|any|k> <name>..."));
        };
        if members.is_empty() {
            return Err(err(line, "a group needs at least one member"));
        }
        if *name == b"none" || self.names.contains_key(*name) {
            return Err(err(line, "name already defined"));
        }
        if self.groups.len() == MAX_GROUPS {
            return Err(err(line, "too many groups"));
        }
        let n = members.len();
        let k = parse_threshold(threshold, n, line)?;
        let mut ms = Vec::with_capacity(n);
        for m in members {
            if *m == b"none" {
                return Err(err(line, "none cannot be a group member"));
            }
            let member = *self
                .names
                .get(*m)
                .ok_or_else(|| err(line, "member is not defined on a preceding line"))?;
            if !self.used_as_member.insert(m.to_vec()) {
                return Err(err(
                    line,
                    "a name can be listed as a group member only once",
                ));
            }
            ms.push(member);
        }
        self.names
            .insert(name.to_vec(), Member::Group(self.groups.len()));
        self.groups.push(Group {
            name: name.to_vec(),
            threshold: k,
            members: ms,
        });
        Ok(())
    }

    /// `quorum <name>`
    fn quorum(&mut self, line: usize, args: &[&[u8]]) -> Result<()> {
        let [name] = args else {
            return Err(err(line, "expected: quorum <name>"));
        };
        if self.quorum.is_some() {
            return Err(err(line, "more than one quorum line"));
        }
        self.quorum = Some(if *name == b"none" {
            Quorum::None
        } else {
            Quorum::Member(
                *self
                    .names
                    .get(*name)
                    .ok_or_else(|| err(line, "quorum name is not defined on a preceding line"))?,
            )
        });
        Ok(())
    }

    fn finish(self) -> Result<Policy> {
        let quorum = self
            .quorum
            .ok_or_else(|| err(0, "the policy has no quorum line"))?;
        Ok(Policy {
            logs: self.logs,
            witnesses: self.witnesses,
            groups: self.groups,
            quorum,
        })
    }
}

impl Policy {
    /// Parse a policy file.
    pub fn parse(data: &[u8]) -> Result<Policy> {
        check_bytes(data)?;
        let mut parser = PolicyParser::default();
        let body = data.strip_suffix(b"\n").unwrap_or(data);
        for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
            if data.is_empty() {
                break;
            }
            let line = i + 1;
            let fields: Vec<&[u8]> = raw.split(|&b| is_ws(b)).filter(|f| !f.is_empty()).collect();
            let Some((&kw, args)) = fields.split_first() else {
                continue;
            };
            if kw.starts_with(b"#") {
                continue;
            }
            parser.directive(line, kw, args)?;
        }
        parser.finish()
    }

    /// Whether a set of witnesses (indices into `witnesses`) satisfies the quorum.
    pub fn quorum_satisfied(&self, cosigned: &HashSet<usize>) -> bool {
        match self.quorum {
            Quorum::None => true,
            Quorum::Member(m) => self.member_satisfied(m, cosigned, 0),
        }
    }

    fn member_satisfied(&self, m: Member, cosigned: &HashSet<usize>, depth: usize) -> bool {
        match m {
            Member::Witness(w) => cosigned.contains(&w),
            Member::Group(g) => {
                // Groups only reference earlier definitions, so depth is bounded by their count.
                let Some(group) = self.groups.get(g) else {
                    return false;
                };
                if depth > self.groups.len() {
                    return false;
                }
                group
                    .members
                    .iter()
                    .filter(|&&m| self.member_satisfied(m, cosigned, depth + 1))
                    .count()
                    >= group.threshold
            }
        }
    }

    /// The policy as a tlog-policy file that [`Policy::parse`] reads back as this policy (names
    /// that are not UTF-8 are written lossily; parsed policies' names always are).
    pub fn to_text(&self) -> String {
        let name = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let member = |m: &Member| match m {
            Member::Witness(i) => self.witnesses.get(*i).map(|w| name(&w.name)),
            Member::Group(i) => self.groups.get(*i).map(|g| name(&g.name)),
        };
        let mut s = String::new();
        let url = |u: &Option<String>| u.as_ref().map(|u| format!(" {u}")).unwrap_or_default();
        for l in &self.logs {
            s.push_str(&format!("log {}{}\n", l.vkey, url(&l.url)));
        }
        for w in &self.witnesses {
            s.push_str(&format!(
                "witness {} {}{}\n",
                name(&w.name),
                w.vkey,
                url(&w.url)
            ));
        }
        for g in &self.groups {
            let members: Vec<String> = g.members.iter().filter_map(member).collect();
            s.push_str(&format!(
                "group {} {} {}\n",
                name(&g.name),
                g.threshold,
                members.join(" ")
            ));
        }
        match &self.quorum {
            Quorum::None => s.push_str("quorum none\n"),
            Quorum::Member(m) => s.push_str(&format!("quorum {}\n", member(m).unwrap_or_default())),
        }
        s
    }

    /// Witness vkeys, in order.
    pub fn witness_vkeys(&self) -> Vec<Vkey> {
        self.witnesses.iter().map(|w| w.vkey.clone()).collect()
    }

    /// The witnesses whose cosignatures on the checkpoint verify. A known witness whose
    /// cosignature does not verify makes the whole checkpoint invalid.
    pub fn cosigners(&self, c: &SignedCheckpoint) -> Result<HashSet<usize>> {
        let keys = self.witness_vkeys();
        match c.note.verify(&keys) {
            Ok(v) => Ok(v.into_iter().collect()),
            Err(Error::UnverifiedNote) => Ok(HashSet::new()),
            Err(e) => Err(e),
        }
    }

    /// Verify a checkpoint under this policy: signed by a listed log whose key name is the
    /// origin, and cosigned by a quorum of witnesses.
    pub fn verify_checkpoint(&self, bytes: &[u8]) -> Result<SignedCheckpoint> {
        let c = SignedCheckpoint::parse(bytes)?;
        let origin = &c.checkpoint.origin;
        let logs: Vec<Vkey> = self
            .logs
            .iter()
            .filter(|l| &l.vkey.name == origin)
            .map(|l| l.vkey.clone())
            .collect();
        if logs.is_empty() {
            return Err(Error::UnknownLog(origin.clone()));
        }
        c.note.verify(&logs).map_err(|e| match e {
            Error::UnverifiedNote => Error::UnknownLog(origin.clone()),
            e => e,
        })?;
        let cosigned = self.cosigners(&c)?;
        if !self.quorum_satisfied(&cosigned) {
            return Err(Error::QuorumNotMet {
                cosigned: cosigned.len(),
            });
        }
        Ok(c)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;
    use crate::cosignature::Cosigner;
    use crate::hash::Hash;
    use crate::note::Ed25519Signer;
    use ed25519_dalek::SigningKey;

    fn cosigner(i: u8) -> Cosigner {
        Cosigner::new(&format!("w{i}.example"), SigningKey::from_bytes(&[i; 32])).unwrap()
    }

    fn spec_policy() -> (String, Ed25519Signer, Vec<Cosigner>) {
        let log =
            Ed25519Signer::new("example.com/log", SigningKey::from_bytes(&[100; 32])).unwrap();
        let ws: Vec<Cosigner> = (1..=6).map(cosigner).collect();
        let p = format!(
            "# the example of c2sp.org/tlog-policy\nlog {}\n\nwitness X1 {}\nwitness X2 {}\nwitness X3 {}\ngroup X-witnesses 2 X1 X2 X3\n\n  witness Y1\t{} https://y1.example/\nwitness Y2 {}\nwitness Y3 {}\ngroup Y-witnesses any Y1 Y2 Y3\n\ngroup X-and-Y all X-witnesses Y-witnesses\nquorum X-and-Y\n",
            log.vkey(),
            ws[0].vkey(),
            ws[1].vkey(),
            ws[2].vkey(),
            ws[3].vkey(),
            ws[4].vkey(),
            ws[5].vkey()
        );
        (p, log, ws)
    }

    #[test]
    fn text_round_trips() {
        let (p, _, _) = spec_policy();
        let policy = Policy::parse(p.as_bytes()).unwrap();
        assert_eq!(Policy::parse(policy.to_text().as_bytes()).unwrap(), policy);
        let none =
            Policy::parse(format!("log {}\nquorum none\n", spec_policy().1.vkey()).as_bytes())
                .unwrap();
        assert_eq!(Policy::parse(none.to_text().as_bytes()).unwrap(), none);
    }

    #[test]
    fn spec_example_quorum() {
        let (p, _, _) = spec_policy();
        let policy = Policy::parse(p.as_bytes()).unwrap();
        assert_eq!(policy.logs.len(), 1);
        assert_eq!(policy.witnesses.len(), 6);
        assert_eq!(
            policy.witnesses[3].url.as_deref(),
            Some("https://y1.example/")
        );
        let q = |s: &[usize]| policy.quorum_satisfied(&s.iter().copied().collect());
        assert!(q(&[0, 1, 3]));
        assert!(q(&[0, 2, 5]));
        assert!(!q(&[0, 3, 4, 5]));
        assert!(!q(&[0, 1, 2]));
        assert!(!q(&[]));
    }

    #[test]
    fn verify_checkpoint_with_quorum() {
        let (p, log, ws) = spec_policy();
        let policy = Policy::parse(p.as_bytes()).unwrap();
        let cp = Checkpoint::new("example.com/log", 10, Hash::empty());
        let mut sc = SignedCheckpoint::sign(cp.clone(), &log).unwrap();
        assert_eq!(
            policy.verify_checkpoint(&sc.to_bytes()),
            Err(Error::QuorumNotMet { cosigned: 0 })
        );
        for i in [0, 2, 4] {
            sc.note
                .sigs
                .push(ws[i].cosign(&sc.note.text, 1700000000).unwrap());
        }
        assert_eq!(
            policy.verify_checkpoint(&sc.to_bytes()).unwrap().checkpoint,
            cp
        );
        // A bad cosignature from a known witness rejects the checkpoint.
        let mut bad = sc.clone();
        bad.note.sigs[1].sig[20] ^= 1;
        assert!(matches!(
            policy.verify_checkpoint(&bad.to_bytes()),
            Err(Error::InvalidSignature { .. })
        ));
        // An unknown origin.
        let other =
            Ed25519Signer::new("example.com/other", SigningKey::from_bytes(&[9; 32])).unwrap();
        let sc2 = SignedCheckpoint::sign(
            Checkpoint::new("example.com/other", 1, Hash::empty()),
            &other,
        )
        .unwrap();
        assert_eq!(
            policy.verify_checkpoint(&sc2.to_bytes()),
            Err(Error::UnknownLog("example.com/other".into()))
        );
    }

    #[test]
    fn quorum_none_and_single_witness() {
        let p = Policy::parse(b"quorum none\n").unwrap();
        assert!(p.quorum_satisfied(&HashSet::new()));
        let w = cosigner(1);
        let p = Policy::parse(format!("witness w {}\nquorum w\n", w.vkey()).as_bytes()).unwrap();
        assert!(!p.quorum_satisfied(&HashSet::new()));
        assert!(p.quorum_satisfied(&[0].into_iter().collect()));
    }

    #[test]
    fn malformed_policies() {
        let w1 = cosigner(1).vkey().to_string();
        let w2 = cosigner(2).vkey().to_string();
        let log = Ed25519Signer::new("l", SigningKey::from_bytes(&[3; 32]))
            .unwrap()
            .vkey()
            .to_string();
        let cases = [
            (String::new(), "no quorum"),
            ("quorum none".to_string(), "no final newline"),
            ("quorum none\nquorum none\n".to_string(), "two quorums"),
            ("quorum x\n".to_string(), "undefined quorum"),
            (
                format!("quorum w\nwitness w {w1}\n"),
                "quorum before definition",
            ),
            (
                format!("witness w {w1}\nwitness w {w2}\nquorum w\n"),
                "duplicate name",
            ),
            (
                format!("witness a {w1}\nwitness b {w1}\nquorum a\n"),
                "duplicate key",
            ),
            (
                format!("witness none {w1}\nquorum none\n"),
                "none as witness name",
            ),
            (format!("witness a {w1}\ngroup g 2 a\nquorum g\n"), "k > n"),
            (format!("witness a {w1}\ngroup g 0 a\nquorum g\n"), "k = 0"),
            (
                format!("witness a {w1}\ngroup g 01 a\nquorum g\n"),
                "leading zero",
            ),
            (
                format!("witness a {w1}\ngroup g any\nquorum g\n"),
                "no members",
            ),
            (
                format!("witness a {w1}\ngroup g any a a\nquorum g\n"),
                "member twice",
            ),
            (
                format!("witness a {w1}\ngroup g any a\ngroup h any a\nquorum h\n"),
                "member in two groups",
            ),
            (
                format!("witness a {w1}\ngroup g any none\nquorum g\n"),
                "none as member",
            ),
            (
                format!("witness a {w1}\ngroup g any b\nquorum g\n"),
                "undefined member",
            ),
            (format!("witness a {log}\nquorum a\n"), "log key as witness"),
            (format!("log {w1}\nquorum none\n"), "witness key as log"),
            (
                format!("log {log}\nlog {log}\nquorum none\n"),
                "duplicate log",
            ),
            (format!("witness a {w1}\x0bquorum a\n"), "vertical tab"),
            ("quorum none\r\n".to_string(), "carriage return"),
            ("frobnicate\nquorum none\n".to_string(), "unknown keyword"),
            (
                format!("log {log} url extra\nquorum none\n"),
                "too many fields",
            ),
        ];
        for (p, why) in cases {
            assert!(Policy::parse(p.as_bytes()).is_err(), "{why}");
        }
        // Comments, blank lines, tabs, and opaque high-bit names are fine.
        let ok = format!("# c\n\t# c2\n\n\twitness \u{212a} {w1}\t\nquorum \u{212a}\n");
        let p = Policy::parse(ok.as_bytes()).unwrap();
        assert_eq!(p.witnesses[0].name, "\u{212a}".as_bytes());
    }
}
