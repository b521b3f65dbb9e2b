//! From the text of `/proc/<pid>/cgroup` to the pod UID and container ID of
//! a process.
//!
//! Only the kernel writes this file, and a container cannot change what it
//! says about its own processes (unlike mountinfo, whose paths a container
//! can arrange with its own mounts). The paths it holds depend on the
//! kubelet's cgroup driver and the container runtime:
//!
//! | driver / runtime      | container cgroup                                                        |
//! |-----------------------|-------------------------------------------------------------------------|
//! | cgroupfs (any)        | `/kubepods/<qos>/pod<uid>/<id>`                                         |
//! | systemd + docker      | `/kubepods.slice/…/kubepods-<qos>-pod<uid_>.slice/docker-<id>.scope`    |
//! | systemd + cri-o       | `…/kubepods-<qos>-pod<uid_>.slice/crio-<id>.scope`                      |
//! | systemd + containerd  | `…/kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope`            |
//! | containerd, colon form| `…/kubepods-<qos>-pod<uid_>.slice:cri-containerd:<id>`                  |
//! | kind (nested)         | any of the above under `/docker/<node id>/` or `/kubelet.slice/…`       |
//! | seen from a cgroupns  | any of the above after `/../..` (relative to the reader's namespace)    |
//!
//! `<uid_>` is the pod UID with `-` written as `_` (systemd unit names
//! reserve `-` for nesting); `<id>` is 64 lowercase hex digits. Guaranteed
//! pods have no `<qos>` level. cgroup v1 has one line per hierarchy
//! (`N:controllers:path`), cgroup v2 a single `0::path` line.
//!
//! A path outside `kubepods` belongs to no pod (a host process): that is
//! not an error, the process simply gets no `k8s` selectors. A path inside
//! `kubepods` that fits none of the forms above is an error naming it.

use std::fmt;

/// Longest cgroup file read; real ones are a few hundred bytes (v2) to a
/// few kilobytes (v1 with many hierarchies).
pub const MAX_CGROUP_FILE: usize = 64 * 1024;
/// Most lines considered (v1 has about fifteen hierarchies).
pub const MAX_CGROUP_LINES: usize = 64;
/// How much of a bad line an error quotes.
const QUOTED: usize = 200;

/// Length of a container ID in hex digits.
pub const CONTAINER_ID_LEN: usize = 64;

/// The pod and container a process runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodContainer {
    /// The pod's UID in its canonical form (lowercase, with dashes).
    pub pod_uid: String,
    /// The container ID (64 lowercase hex digits), without a runtime prefix.
    pub container_id: String,
}

/// A cgroup file that cannot be read as a pod's.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgroupError {
    /// Larger than [`MAX_CGROUP_FILE`] or more lines than [`MAX_CGROUP_LINES`].
    #[error(
        "the cgroup file is larger than the limits ({MAX_CGROUP_FILE} bytes, {MAX_CGROUP_LINES} lines)"
    )]
    TooLarge,
    /// Not `hierarchy:controllers:path`.
    #[error("malformed cgroup line {0}")]
    Malformed(Quoted),
    /// Under `kubepods`, but in none of the known forms.
    #[error("cgroup path in no known Kubernetes format: {0}")]
    UnknownFormat(Quoted),
    /// Two hierarchies place the process in different pods or containers.
    #[error("cgroup lines disagree on the pod or container: {0} and {1}")]
    Conflicting(Quoted, Quoted),
}

/// A piece of untrusted text as an error quotes it: bounded, debug-escaped.
#[derive(Clone, PartialEq, Eq)]
pub struct Quoted(String);

impl Quoted {
    fn new(text: &str) -> Self {
        let mut end = text.len().min(QUOTED);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut s = format!("{:?}", &text[..end]);
        if end < text.len() {
            s.push('…');
        }
        Self(s)
    }
}

impl fmt::Display for Quoted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Quoted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads a whole cgroup file. `Ok(None)`: the process is in no pod.
///
/// # Errors
/// See [`CgroupError`]; every line under `kubepods` must parse, and all of
/// them must name the same pod and container.
pub fn parse_cgroup_file(text: &str) -> Result<Option<PodContainer>, CgroupError> {
    if text.len() > MAX_CGROUP_FILE {
        return Err(CgroupError::TooLarge);
    }
    let mut found: Option<(PodContainer, &str)> = None;
    for (n, line) in text.lines().enumerate() {
        if n >= MAX_CGROUP_LINES {
            return Err(CgroupError::TooLarge);
        }
        if line.is_empty() {
            continue;
        }
        let mut fields = line.splitn(3, ':');
        let (Some(hierarchy), Some(_controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(CgroupError::Malformed(Quoted::new(line)));
        };
        if hierarchy.is_empty() || !hierarchy.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CgroupError::Malformed(Quoted::new(line)));
        }
        let Some(this) = parse_cgroup_path(path)? else {
            continue;
        };
        match &found {
            None => found = Some((this, line)),
            Some((first, first_line)) if *first != this => {
                return Err(CgroupError::Conflicting(
                    Quoted::new(first_line),
                    Quoted::new(line),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(found.map(|(pc, _)| pc))
}

/// Reads one cgroup path. `Ok(None)`: not under `kubepods`.
///
/// # Errors
/// [`CgroupError::UnknownFormat`] for a `kubepods` path in no known form.
pub fn parse_cgroup_path(path: &str) -> Result<Option<PodContainer>, CgroupError> {
    if !path.contains("kubepods") {
        return Ok(None);
    }
    let unknown = || CgroupError::UnknownFormat(Quoted::new(path));
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let last = segments.last().copied().unwrap_or_default();
    // The colon form puts the pod slice and the container in one segment.
    let (pod_segment, container) = match last.split(':').collect::<Vec<_>>().as_slice() {
        [pod, runtime, id] => {
            if !matches!(*runtime, "cri-containerd" | "crio" | "docker") || !is_container_id(id) {
                return Err(unknown());
            }
            (*pod, (*id).to_owned())
        }
        [_] => {
            let container = container_id_of(last).ok_or_else(unknown)?;
            let pod = segments
                .len()
                .checked_sub(2)
                .and_then(|i| segments.get(i))
                .copied()
                .ok_or_else(unknown)?;
            (pod, container)
        }
        _ => return Err(unknown()),
    };
    let pod_uid = pod_uid_of(pod_segment).ok_or_else(unknown)?;
    Ok(Some(PodContainer {
        pod_uid,
        container_id: container,
    }))
}

/// The container ID of a container's own cgroup segment: a bare ID
/// (cgroupfs) or `<runtime>-<id>.scope` (systemd).
fn container_id_of(segment: &str) -> Option<String> {
    if is_container_id(segment) {
        return Some(segment.to_owned());
    }
    let unit = segment.strip_suffix(".scope")?;
    let id = ["cri-containerd-", "crio-", "docker-"]
        .iter()
        .find_map(|prefix| unit.strip_prefix(prefix))?;
    is_container_id(id).then(|| id.to_owned())
}

/// The pod UID of a pod's cgroup segment: `pod<uid>` (cgroupfs) or
/// `…-pod<uid_>.slice` (systemd).
fn pod_uid_of(segment: &str) -> Option<String> {
    if let Some(uid) = segment.strip_prefix("pod") {
        return is_uuid(uid).then(|| uid.to_owned());
    }
    let unit = segment.strip_suffix(".slice")?;
    let (parent, uid) = unit.rsplit_once("-pod")?;
    if !parent.ends_with("kubepods") && !parent.contains("kubepods-") {
        return None;
    }
    let uid = uid.replace('_', "-");
    is_uuid(&uid).then_some(uid)
}

fn is_container_id(s: &str) -> bool {
    s.len() == CONTAINER_ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// 8-4-4-4-12 lowercase hex digits, as the API server writes pod UIDs.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const UID_: &str = "2c48913c_b29f_11e7_9350_020968147796";
    const ID: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";
    const KIND_NODE: &str = "e7a1d0c5a3b0f8f2c2d9a0e1b4c8d6f7a9b3c5d2e1f0a8b7c6d5e4f3a2b1c0d9";

    fn want() -> Option<PodContainer> {
        Some(PodContainer {
            pod_uid: UID.into(),
            container_id: ID.into(),
        })
    }

    #[test]
    fn every_known_path_format() {
        let cases = [
            // cgroupfs driver (docker, containerd or cri-o), each QoS class.
            format!("/kubepods/burstable/pod{UID}/{ID}"),
            format!("/kubepods/besteffort/pod{UID}/{ID}"),
            format!("/kubepods/pod{UID}/{ID}"),
            // systemd driver + docker.
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{ID}.scope"
            ),
            // systemd + cri-o, guaranteed QoS (no QoS level).
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope"),
            // systemd + containerd.
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
            ),
            // containerd's colon form (cgroup v1, containerd under systemd).
            format!(
                "/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{ID}"
            ),
            // kind: the node is itself a docker container (cgroupfs inside).
            format!("/docker/{KIND_NODE}/kubepods/besteffort/pod{UID}/{ID}"),
            // kind with the systemd driver and cgroup namespaces.
            format!(
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
            ),
            // kind, older: the kubelet's own root cgroup.
            format!("/kubelet/kubepods/burstable/pod{UID}/{ID}"),
            // Read by an agent in a cgroup namespace of its own (a pod on
            // cgroup v2): paths outside it are relative, with `..`.
            format!("/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"),
        ];
        for path in &cases {
            assert_eq!(parse_cgroup_path(path), Ok(want()), "{path}");
            // The same path as cgroup v2 sees it.
            assert_eq!(
                parse_cgroup_file(&format!("0::{path}\n")),
                Ok(want()),
                "{path}"
            );
        }
    }

    #[test]
    fn a_cgroup_v1_file_with_many_hierarchies() {
        let p = format!("/kubepods/burstable/pod{UID}/{ID}");
        let s = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{ID}.scope"
        );
        let file = format!(
            "12:hugetlb:{p}\n11:memory:{p}\n10:cpu,cpuacct:{p}\n9:devices:{p}\n8:net_cls,net_prio:{p}\n\
             7:pids:{p}\n6:freezer:{p}\n5:blkio:{p}\n4:perf_event:{p}\n3:cpuset:{p}\n2:rdma:/\n\
             1:name=systemd:{s}\n0::/\n"
        );
        assert_eq!(parse_cgroup_file(&file), Ok(want()));
    }

    #[test]
    fn host_processes_are_in_no_pod() {
        for file in [
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            "0::/system.slice/kubelet.service\n",
            "0::/\n",
            "12:memory:/user.slice\n1:name=systemd:/init.scope\n",
            "",
        ] {
            assert_eq!(parse_cgroup_file(file), Ok(None), "{file:?}");
        }
    }

    #[test]
    fn kubepods_paths_in_no_known_form_are_errors() {
        let cases = [
            // The pod's own cgroup, no container.
            format!("/kubepods/burstable/pod{UID}"),
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"),
            // cri-o's conmon is not the container.
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope"),
            // A short or uppercase container ID.
            format!("/kubepods/burstable/pod{UID}/{}", &ID[..63]),
            format!("/kubepods/burstable/pod{UID}/{}", ID.to_uppercase()),
            // A pod segment that is not a UUID.
            format!("/kubepods/burstable/podnot-a-uid/{ID}"),
            format!("/kubepods/burstable/pod{}/{ID}", &UID[1..]),
            // An unknown runtime prefix or colon form.
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/rkt-{ID}.scope"),
            format!("/x/kubepods-pod{UID_}.slice:rkt:{ID}"),
            format!("/x/kubepods-pod{UID_}.slice:a:b:{ID}"),
            // A systemd pod slice outside kubepods.
            format!("/kubepods/other-pod{UID_}.slice/docker-{ID}.scope"),
            // The container directly under kubepods.
            format!("/kubepods/{ID}"),
            "/kubepods".to_owned(),
        ];
        for path in &cases {
            let got = parse_cgroup_path(path);
            assert!(
                matches!(got, Err(CgroupError::UnknownFormat(_))),
                "{path}: {got:?}"
            );
            let message = parse_cgroup_file(&format!("0::{path}"))
                .unwrap_err()
                .to_string();
            assert!(message.contains(&path[..path.len().min(100)]), "{message}");
        }
    }

    #[test]
    fn malformed_lines_and_disagreements_are_errors() {
        for file in ["kubepods\n", "x::/kubepods\n", ":memory:/\n"] {
            assert!(
                matches!(parse_cgroup_file(file), Err(CgroupError::Malformed(_))),
                "{file:?}"
            );
        }
        let other = "0123456789abcdef".repeat(4);
        let file = format!(
            "2:memory:/kubepods/pod{UID}/{ID}\n1:name=systemd:/kubepods/pod{UID}/{other}\n"
        );
        assert!(matches!(
            parse_cgroup_file(&file),
            Err(CgroupError::Conflicting(..))
        ));
    }

    #[test]
    fn input_is_bounded_and_errors_quote_little() {
        let big = format!("0::/kubepods/{}\n", "a".repeat(MAX_CGROUP_FILE));
        assert_eq!(parse_cgroup_file(&big), Err(CgroupError::TooLarge));
        let many = "1:memory:/\n".repeat(MAX_CGROUP_LINES + 1);
        assert_eq!(parse_cgroup_file(&many), Err(CgroupError::TooLarge));
        let long = format!("0::/kubepods/{}é", "b".repeat(1000));
        let message = parse_cgroup_file(&long).unwrap_err().to_string();
        assert!(message.len() < 2 * QUOTED, "{message}");
        assert!(message.ends_with('…'), "{message}");
    }
}
