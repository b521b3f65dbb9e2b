//! The Helm chart as `signet install --render` writes it: validated by
//! kubernetes-validate (strict, offline schemas) against three Kubernetes
//! versions, and read back with PyYAML and tomllib (tests/python/
//! manifests_to_json.py) to check what the schemas cannot: RBAC equal to the
//! calls the code makes, hostPID only with the pod attestor, the token
//! audience the CA expects, and socket paths that land on the host volumes.
//! The real signet-ca and signet-agent are started with the settings files
//! the chart renders, so a setting name they do not know cannot pass.
//!
//! Needs `SIGNET_PYTHON`: a Python whose venv has `kubernetes-validate` and
//! `prometheus_client` (scripts/test.sh installs both), and the binaries built.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The three most recent Kubernetes versions kubernetes-validate 1.37 ships
/// strict schemas for (its kubernetes-json-schema/ has v1.35.0 .. v1.37.0).
const KUBERNETES_VERSIONS: &[&str] = &["1.35.0", "1.36.0", "1.37.0"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn all_features() -> PathBuf {
    repo().join("deploy/charts/signet/ci/all-features-values.yaml")
}

fn python() -> PathBuf {
    std::env::var_os("SIGNET_PYTHON").map(PathBuf::from).expect(
        "SIGNET_PYTHON must name a Python with kubernetes-validate (scripts/test.sh sets it up)",
    )
}

/// `signet install --render ARGS`, stdout on success.
fn render(args: &[&str]) -> String {
    let out = signet_install(args);
    assert!(
        out.status.success(),
        "render {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn signet_install(args: &[&str]) -> std::process::Output {
    Command::new(signet_tests::binary("signet").unwrap())
        .args(["install", "--render"])
        .args(args)
        .output()
        .unwrap()
}

/// kubernetes-validate --strict against `version`; (success, its output).
fn validate(file: &Path, version: &str) -> (bool, String) {
    let python = python();
    let out = Command::new(&python)
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--quiet",
            "-k",
            version,
        ])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("running {} -m kubernetes_validate: {e}", python.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The rendered stream parsed by PyYAML (ConfigMaps' TOML under `_toml`).
fn parse(manifests: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, manifests).unwrap();
    let out = Command::new(python())
        .arg(repo().join("tests/python/manifests_to_json.py"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "parse failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn get<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    find(docs, kind, name).unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn toml<'a>(docs: &'a [Value], configmap: &str, key: &str) -> &'a Value {
    &get(docs, "ConfigMap", configmap)["_toml"][key]
}

/// The chart's CustomResourceDefinitions (Helm installs `crds/` as is,
/// before the templates), if it has any.
fn crd_files() -> Vec<PathBuf> {
    let dir = repo().join("deploy/charts/signet/crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The manifests and the chart's CRDs pass kubernetes-validate --strict on
/// every version.
fn validate_all_versions(manifests: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, manifests).unwrap();
    let mut files = vec![file];
    files.extend(crd_files());
    for file in &files {
        for version in KUBERNETES_VERSIONS {
            let (ok, text) = validate(file, version);
            assert!(
                ok,
                "kubernetes-validate --strict -k {version} refused {}:\n{text}",
                file.display()
            );
        }
    }
}

#[test]
fn default_values_validate_strictly_on_three_kubernetes_versions() {
    validate_all_versions(&render(&[]));
}

#[test]
fn every_feature_on_validates_strictly_on_three_kubernetes_versions() {
    let manifests = render(&["-f", all_features().to_str().unwrap()]);
    // The optional parts are really there, so the validation covered them.
    for needle in [
        "upstream-ca",
        "name: bundle",
        "name: mesh-api",
        "istio-ca-root-cert",
        "hostPID: true",
    ] {
        assert!(manifests.contains(needle), "{needle} missing");
    }
    validate_all_versions(&manifests);
}

/// The validator is not a rubber stamp: a field the schema lacks, and a
/// wrong type, are refused (so the two tests above can fail).
#[test]
fn the_validator_refuses_an_unknown_field_and_a_wrong_type() {
    let good = render(&[]);
    for (from, to) in [
        (
            "      hostPID: true",
            "      hostPID: true\n      hostPid: true",
        ),
        ("replicas: 1", "replicas: \"one\""),
    ] {
        assert!(good.contains(from));
        let bad = good.replacen(from, to, 1);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.yaml");
        std::fs::write(&file, bad).unwrap();
        let (ok, _) = validate(&file, KUBERNETES_VERSIONS[2]);
        assert!(!ok, "kubernetes-validate accepted {to:?}");
    }
}

/// One permission: (API group, resource, verb, resource name or "*").
type Grant = (String, String, String, String);

fn grants(role: &Value) -> BTreeSet<Grant> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        let names = strings(&rule["resourceNames"]);
        let names = if names.is_empty() {
            vec!["*".to_owned()]
        } else {
            names
        };
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                for v in strings(&rule["verbs"]) {
                    for n in &names {
                        out.insert((g.clone(), r.clone(), v.clone(), n.clone()));
                    }
                }
            }
        }
    }
    out
}

/// Resources of `signet_k8s::rbac::CA_RBAC` the CA uses only to publish
/// the root to istio-ca-root-cert in every namespace: the chart grants them
/// only then.
const PUBLISH_ONLY: &[&str] = &["namespaces", "configmaps"];

/// Resources of `signet_k8s::rbac::CA_RBAC` the CA reads only with
/// `identities.policyCrd` (`[k8s] policy_crd`).
const POLICY_CRD_ONLY: &[&str] = &["identitypolicies"];

/// What Kubernetes' bootstrap policy puts in `system:auth-delegator`.
const AUTH_DELEGATOR: &[(&str, &str, &str)] = &[
    ("authentication.k8s.io", "tokenreviews", "create"),
    ("authorization.k8s.io", "subjectaccessreviews", "create"),
];

/// (group, resource, verb) without resource names.
type Call = (String, String, String);

fn calls(grants: &BTreeSet<Grant>) -> BTreeSet<Call> {
    grants
        .iter()
        .map(|(g, r, v, _)| (g.clone(), r.clone(), v.clone()))
        .collect()
}

fn expected_ca(publish_istio_root: bool, policy_crd: bool) -> BTreeSet<Call> {
    let mut want = BTreeSet::new();
    for rule in signet_k8s::rbac::CA_RBAC {
        if PUBLISH_ONLY.contains(&rule.resource) && !publish_istio_root {
            continue;
        }
        if POLICY_CRD_ONLY.contains(&rule.resource) && !policy_crd {
            continue;
        }
        for verb in rule.verbs {
            want.insert((
                rule.api_group.to_owned(),
                rule.resource.to_owned(),
                (*verb).to_owned(),
            ));
        }
    }
    want
}

fn expected_agent(pod_attestor: bool) -> BTreeSet<Call> {
    let mut want = BTreeSet::new();
    if pod_attestor {
        for rule in signet_k8s::rbac::AGENT_RBAC {
            for verb in rule.verbs {
                want.insert((
                    rule.api_group.to_owned(),
                    rule.resource.to_owned(),
                    (*verb).to_owned(),
                ));
            }
        }
    }
    want
}

/// Every ClusterRole/Role bound to `sa` (by a binding in the manifests), and
/// the names of the cluster roles it references that the manifests do not define.
fn bound_grants(docs: &[Value], sa: &str) -> (BTreeSet<Grant>, BTreeSet<String>) {
    let mut got = BTreeSet::new();
    let mut external = BTreeSet::new();
    for binding in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
    {
        let subjects = binding["subjects"].as_array().unwrap();
        if !subjects
            .iter()
            .any(|s| s["kind"] == "ServiceAccount" && s["name"] == sa)
        {
            continue;
        }
        let role = binding["roleRef"]["name"].as_str().unwrap();
        let kind = binding["roleRef"]["kind"].as_str().unwrap();
        match find(docs, kind, role) {
            Some(r) => got.extend(grants(r)),
            None => {
                external.insert(role.to_owned());
            }
        }
    }
    // No Role or ClusterRole lies around unbound (unused permissions).
    (got, external)
}

#[test]
fn rbac_is_exactly_the_calls_the_code_makes() {
    let all = all_features();
    // (args, Istio root published, pod attestor, IdentityPolicy objects read)
    let cases: [(&[&str], bool, bool, bool); 3] = [
        (&[], false, true, false),
        (
            &[
                "--set",
                "agent.podAttestor.enabled=false",
                "--set",
                "mesh.istio.enabled=true",
                "--set",
                "mesh.istio.publishRootCert=false",
            ],
            false,
            false,
            false,
        ),
        (&["-f", all.to_str().unwrap()], true, true, true),
    ];
    for (args, publish, pod_attestor, policy_crd) in cases {
        let docs = parse(&render(args));
        let (ca, ca_external) = bound_grants(&docs, "signet-ca");
        assert_eq!(
            ca_external,
            BTreeSet::from(["system:auth-delegator".to_owned()]),
            "{args:?}"
        );
        let mut ca_calls = calls(&ca);
        ca_calls.extend(
            AUTH_DELEGATOR
                .iter()
                .map(|(g, r, v)| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned())),
        );
        // auth-delegator also grants SubjectAccessReview, which is the price of
        // using the role the issue names; nothing else may be extra.
        let mut want = expected_ca(publish, policy_crd);
        want.insert((
            "authorization.k8s.io".into(),
            "subjectaccessreviews".into(),
            "create".into(),
        ));
        assert_eq!(ca_calls, want, "{args:?}");
        // The ConfigMaps it reads and rewrites are only istio-ca-root-cert.
        for (_, resource, verb, name) in &ca {
            if resource == "configmaps" && verb != "create" {
                assert_eq!(name, "istio-ca-root-cert", "{args:?}");
            }
        }
        let (agent, agent_external) = bound_grants(&docs, "signet-agent");
        assert_eq!(calls(&agent), expected_agent(pod_attestor), "{args:?}");
        assert!(agent_external.is_empty(), "{args:?}");
        let roles = docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
            .count();
        let bound = usize::from(!ca.is_empty()) + usize::from(!agent.is_empty());
        assert_eq!(roles, bound, "a role nothing binds, {args:?}");
    }
}

fn agent_pod_spec(docs: &[Value]) -> &Value {
    &get(docs, "DaemonSet", "signet-agent")["spec"]["template"]["spec"]
}

#[test]
fn host_pid_only_with_the_pod_attestor() {
    let on = parse(&render(&[]));
    assert_eq!(agent_pod_spec(&on)["hostPID"], true);
    // The kubelet is reached on 127.0.0.1, so the agent is on the host's
    // network, and still resolves the CA's Service name.
    let kubelet = toml(&on, "signet-agent", "agent.toml")["k8s_workload"]["kubelet_url"]
        .as_str()
        .unwrap();
    assert!(kubelet.starts_with("https://127.0.0.1:"), "{kubelet}");
    assert_eq!(agent_pod_spec(&on)["hostNetwork"], true);
    assert_eq!(agent_pod_spec(&on)["dnsPolicy"], "ClusterFirstWithHostNet");
    assert!(
        toml(&on, "signet-agent", "agent.toml")
            .get("k8s_workload")
            .is_some()
    );
    let off = parse(&render(&["--set", "agent.podAttestor.enabled=false"]));
    assert!(agent_pod_spec(&off).get("hostPID").is_none());
    assert!(agent_pod_spec(&off).get("hostNetwork").is_none());
    assert!(
        toml(&off, "signet-agent", "agent.toml")
            .get("k8s_workload")
            .is_none()
    );
    // The CA never shares the host's PID namespace.
    let ca = &get(&on, "StatefulSet", "signet-ca")["spec"]["template"]["spec"];
    assert!(ca.get("hostPID").is_none());
}

/// The volume mounted at the longest mountPath that contains `path`.
fn volume_for<'a>(pod: &'a Value, path: &str) -> Option<&'a Value> {
    let container = &pod["containers"][0];
    let mount = container["volumeMounts"]
        .as_array()?
        .iter()
        .filter(|m| {
            let dir = m["mountPath"].as_str().unwrap_or("/nowhere");
            path.starts_with(&format!("{}/", dir.trim_end_matches('/')))
        })
        .max_by_key(|m| m["mountPath"].as_str().unwrap_or_default().len())?;
    pod["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == mount["name"])
}

#[test]
fn token_audience_and_path_match_what_the_ca_and_agent_are_told() {
    for args in [vec![], vec!["--set", "agent.psat.audience=signet-ca-prod"]] {
        let docs = parse(&render(&args));
        let pod = agent_pod_spec(&docs);
        let agent = toml(&docs, "signet-agent", "agent.toml");
        let token_path = agent["k8s_psat_token_file"].as_str().unwrap();
        let volume = volume_for(pod, token_path).expect("the token path is on no volume");
        let source = &volume["projected"]["sources"][0]["serviceAccountToken"];
        let file = token_path.rsplit('/').next().unwrap();
        assert_eq!(source["path"], file, "{args:?}");
        let ca = toml(&docs, "signet-ca", "ca.toml");
        assert_eq!(source["audience"], ca["k8s"]["psat_audience"], "{args:?}");
        // The kubelet refuses projected tokens shorter than 10 minutes.
        assert!(source["expirationSeconds"].as_i64().unwrap() >= 600);
        // The agent's own account is on the CA's allow-list.
        let allow: Vec<&str> = ca["k8s"]["psat_allowed_service_accounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(allow.contains(&"signet:signet-agent"), "{allow:?}");
        if !args.is_empty() {
            assert_eq!(source["audience"], "signet-ca-prod");
        }
    }
}

#[test]
fn socket_paths_land_on_host_volumes() {
    for args in [
        vec![],
        vec![
            "--set",
            "agent.sdsSocketDir=/run/sds",
            "--set",
            "agent.sdsSocket=/run/sds/envoy.sock",
        ],
    ] {
        let docs = parse(&render(&args));
        let pod = agent_pod_spec(&docs);
        let agent = toml(&docs, "signet-agent", "agent.toml");
        for key in ["workload_api_socket", "sds_socket"] {
            let path = agent[key].as_str().unwrap();
            let volume =
                volume_for(pod, path).unwrap_or_else(|| panic!("{key} {path} is on no volume"));
            let host = volume["hostPath"]["path"]
                .as_str()
                .unwrap_or_else(|| panic!("{key} is not on a hostPath"));
            let mount = pod["containers"][0]["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == volume["name"])
                .unwrap();
            // Mounted at the same path as on the host, so workloads mounting the
            // host directory find the socket under the same name.
            assert_eq!(mount["mountPath"], host, "{key} {args:?}");
        }
    }
    // Istio's proxies look here by default.
    let docs = parse(&render(&[]));
    assert_eq!(
        toml(&docs, "signet-agent", "agent.toml")["sds_socket"],
        "/var/run/secrets/workload-spiffe-uds/socket"
    );
    // The node name comes from the downward API; the agent has a readiness probe.
    let ds = agent_pod_spec(&docs);
    assert!(
        ds["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "NODE_NAME"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName")
    );
    assert!(ds["containers"][0].get("readinessProbe").is_some());
}

#[test]
fn the_ca_runs_unprivileged_with_its_store_on_a_volume_claim() {
    let docs = parse(&render(&["-f", all_features().to_str().unwrap()]));
    let sts = get(&docs, "StatefulSet", "signet-ca");
    assert_eq!(sts["spec"]["replicas"], 1);
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    let ca = toml(&docs, "signet-ca", "ca.toml");
    let data_dir = ca["data_dir"].as_str().unwrap();
    let claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
        .as_str()
        .unwrap();
    assert!(
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == claim && m["mountPath"] == data_dir)
    );
    // upstream_ca points into the mounted Secret.
    let upstream = ca["upstream_ca"].as_str().unwrap();
    let secret_volume = volume_for(pod, upstream.split(',').next().unwrap()).unwrap();
    assert_eq!(secret_volume["secret"]["secretName"], "signet-upstream-ca");
    // Every port the CA is told to listen on is a container port and a Service port.
    let service = get(&docs, "Service", "signet-ca");
    let mut listens = vec![
        ca["listen"].as_str().unwrap(),
        ca["bundle_endpoint"]["listen"].as_str().unwrap(),
    ];
    listens.push(ca["mesh_api"]["listen"].as_str().unwrap());
    for listen in listens {
        let port: i64 = listen.rsplit(':').next().unwrap().parse().unwrap();
        assert!(
            c["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["containerPort"] == port),
            "{listen}"
        );
        assert!(
            service["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["port"] == port),
            "{listen}"
        );
    }
    assert_eq!(
        get(&docs, "PodDisruptionBudget", "signet-ca")["spec"]["selector"]["matchLabels"],
        sts["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn bad_values_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.yaml");
    std::fs::write(&typo, "agent:\n  podAtestor:\n    enabled: false\n").unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "trustDomain: a\n  clusterName: b\n").unwrap();
    for (args, needle) in [
        (vec!["--set", "ca.prot=1"], "unknown value \"ca.prot\""),
        (
            vec!["-f", typo.to_str().unwrap()],
            "unknown value \"agent.podAtestor\"",
        ),
        (
            vec!["-f", broken.to_str().unwrap()],
            "line 2: unexpected indentation",
        ),
        (vec!["--set", "ca=1"], "is a map in the chart"),
        (vec!["--set", "novalue"], "expected KEY=VALUE"),
        (vec!["--release", "Bad_Name"], "release \"Bad_Name\""),
        (
            vec!["--set", "ca.replicas=3"],
            "ca.replicas > 1 needs ca.store.secretName",
        ),
        (
            vec!["--set", "ca.replicas=0"],
            "ca.replicas must be 1 or more",
        ),
    ] {
        let out = signet_install(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(out.stdout.is_empty(), "{args:?} still wrote manifests");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn output_dir_gets_one_file_per_template_and_release_names_follow() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let out = signet_install(&[
        "--release",
        "id",
        "-n",
        "identity",
        "--output-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "agent-config.yaml",
            "agent-daemonset.yaml",
            "agent-rbac.yaml",
            "ca-config.yaml",
            "ca-rbac.yaml",
            "ca-service.yaml",
            "ca-statefulset.yaml",
            "identitypolicies.signet.dev.yaml"
        ]
    );
    let all: String = files
        .iter()
        .map(|f| std::fs::read_to_string(out_dir.join(f)).unwrap() + "\n---\n")
        .collect();
    let docs = parse(&all);
    let agent = toml(&docs, "id-agent", "agent.toml");
    assert_eq!(agent["ca_address"], "id-ca.identity.svc:8443");
    assert!(
        docs.iter()
            .all(|d| d["kind"].as_str().unwrap().starts_with("Cluster")
                || d["kind"] == "CustomResourceDefinition"
                || d["metadata"]["namespace"] == "identity")
    );
}

/// Replaces `from` (which must be there) with `to` in `text`.
fn rewrite(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is not in:\n{text}");
    text.replace(from, to)
}

/// A self-signed P-256 root as the upstream CA Secret would hold it:
/// `tls.crt` and `tls.key` in `dir`.
fn upstream_ca_secret(dir: &Path) {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=Upstream Root",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
        ])
        .arg(dir.join("tls.key"))
        .arg("-out")
        .arg(dir.join("tls.crt"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The real signet-ca and signet-agent run with the whole `ca.toml` and
/// `agent.toml` the chart renders with every feature on (both refuse
/// unknown settings), against signet-k8s's fake API server: the agent
/// attests its node with its projected token (k8s_psat), the CA watches pods
/// for the mesh API and publishes istio-ca-root-cert. Only what points
/// outside the test's reach is rewritten: addresses to loopback ports, the
/// mounted files (upstream CA Secret, projected token, service-account
/// files) to files the test makes, the API server to the fake (a kubeconfig
/// instead of the pod's own service account), and the node name the
/// downward API gives the agent.
#[tokio::test]
async fn the_real_binaries_run_with_the_rendered_settings() {
    use signet_k8s::fake::{FakeApiServer, FakeToken};
    use signet_k8s::k8s_openapi::api::core::v1::{Node, Pod, PodSpec};
    use signet_k8s::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    let docs = parse(&render(&[
        "-f",
        all_features().to_str().unwrap(),
        "--set",
        "ca.ttl.nodeSvid=2h",
        "--set",
        "ca.ttl.maxX509Svid=12h",
    ]));
    let ca_toml = get(&docs, "ConfigMap", "signet-ca")["data"]["ca.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent_toml = get(&docs, "ConfigMap", "signet-agent")["data"]["agent.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    let ds = get(&docs, "DaemonSet", "signet-agent");
    let agent_sa = ds["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap()
        .to_owned();
    let ns = ds["metadata"]["namespace"].as_str().unwrap().to_owned();
    let trust_domain = toml(&docs, "signet-ca", "ca.toml")["trust_domain"]
        .as_str()
        .unwrap()
        .to_owned();
    let cluster = toml(&docs, "signet-ca", "ca.toml")["k8s"]["cluster"]
        .as_str()
        .unwrap()
        .to_owned();

    // The cluster: the agent's pod on node n1, its projected token.
    let fake = FakeApiServer::start().await.unwrap();
    let n1 = fake.apply_node(Node {
        metadata: ObjectMeta {
            name: Some("n1".into()),
            ..ObjectMeta::default()
        },
        ..Node::default()
    });
    let agent_pod = fake.apply_pod(Pod {
        metadata: ObjectMeta {
            namespace: Some(ns.clone()),
            name: Some("signet-agent-x1".into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some("n1".into()),
            service_account_name: Some(agent_sa.clone()),
            ..PodSpec::default()
        }),
        ..Pod::default()
    });
    let node_uid = n1.metadata.uid.clone().unwrap();
    fake.add_token(
        "projected-agent-token",
        FakeToken {
            namespace: ns.clone(),
            service_account: agent_sa,
            audiences: vec!["signet-ca".into()],
            pod: Some((
                "signet-agent-x1".into(),
                agent_pod.metadata.uid.clone().unwrap(),
            )),
            node: Some(("n1".into(), node_uid.clone())),
            expired: false,
        },
    );

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kubeconfig = d.join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).unwrap();
    let kubeconfig_line = format!("kubeconfig = {:?}\n", kubeconfig.to_str().unwrap());
    std::fs::create_dir(d.join("upstream")).unwrap();
    upstream_ca_secret(&d.join("upstream"));
    let bundle_endpoint = signet_tests::free_loopback_addr().unwrap();
    let mesh_api = signet_tests::free_loopback_addr().unwrap();
    let ca_settings = [
        // The harness reaches the CA as "localhost"; the chart's names stay.
        (
            "server_names = [",
            "server_names = [\"localhost\", ".to_owned(),
        ),
        (
            "/etc/signet/upstream/",
            format!("{}/", d.join("upstream").display()),
        ),
        ("[k8s]\n", format!("[k8s]\n{kubeconfig_line}")),
        ("[mesh_api]\n", format!("[mesh_api]\n{kubeconfig_line}")),
        (
            "listen = \"0.0.0.0:8444\"",
            format!("listen = \"{bundle_endpoint}\""),
        ),
        (
            "listen = \"0.0.0.0:15012\"",
            format!("listen = \"{mesh_api}\""),
        ),
    ]
    .iter()
    .fold(ca_toml, |t, (from, to)| rewrite(&t, from, to));
    assert!(
        ca_settings.contains("node_svid_ttl = \"2h\""),
        "{ca_settings}"
    );
    std::fs::write(d.join("ca.toml"), &ca_settings).unwrap();
    let ca_metrics = signet_tests::free_loopback_addr().unwrap();
    let ca = signet_tests::CaProcess::start(
        signet_tests::CaOptions::new(&trust_domain)
            .flag("config", d.join("ca.toml").to_str().unwrap())
            .flag("metrics-listen", ca_metrics.to_string()),
    )
    .await
    .unwrap();
    // Serving: the node API (start() returned), /metrics (the chart's
    // liveness probe), the mesh API and the bundle endpoint.
    assert!(
        !signet_tests::scrape(ca_metrics)
            .await
            .unwrap()
            .samples
            .is_empty()
    );
    for addr in [mesh_api, bundle_endpoint] {
        tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("nothing listens on {addr}: {e}"));
    }

    // The agent's service-account files and projected token.
    let sa_dir = d.join("sa");
    std::fs::create_dir(&sa_dir).unwrap();
    std::fs::copy(ca.bundle_path(), sa_dir.join("ca.crt")).unwrap();
    std::fs::write(sa_dir.join("token"), "kubelet-token\n").unwrap();
    std::fs::write(d.join("token"), "projected-agent-token\n").unwrap();
    let agent_settings = [
        (
            "/var/run/secrets/signet/token",
            d.join("token").display().to_string(),
        ),
        (
            "/var/run/secrets/kubernetes.io/serviceaccount/",
            format!("{}/", sa_dir.display()),
        ),
        (
            "/etc/signet/bootstrap/bundle.pem",
            ca.bundle_path().display().to_string(),
        ),
        // NODE_NAME, from the downward API in the DaemonSet.
        (
            "[k8s_workload]\n",
            "[k8s_workload]\nnode_name = \"n1\"\n".to_owned(),
        ),
    ]
    .iter()
    .fold(agent_toml, |t, (from, to)| rewrite(&t, from, to));
    assert!(
        agent_settings.contains("node_attestation = \"k8s_psat\"\n"),
        "{agent_settings}"
    );
    std::fs::write(d.join("agent.toml"), &agent_settings).unwrap();
    let agent_metrics = signet_tests::free_loopback_addr().unwrap();
    let mark = ca.audit_mark().unwrap();
    let agent = signet_tests::AgentProcess::start_k8s_psat(
        &ca,
        &format!("{cluster}/{node_uid}"),
        &d.join("token"),
        &[
            "--config",
            d.join("agent.toml").to_str().unwrap(),
            "--metrics-listen",
            &agent_metrics.to_string(),
        ],
    )
    .await
    .unwrap();
    // Attested by its projected token, as the node of its pod.
    let node_id = format!("spiffe://{trust_domain}/signet/node/{cluster}/{node_uid}");
    let rows = ca.audit_since(mark).unwrap();
    assert!(
        rows.iter().any(|r| r.action == "attest_node_k8s_psat"
            && r.result == "issued"
            && r.spiffe_id == node_id),
        "{rows:#?}"
    );
    // The readiness probe's target answers.
    assert!(
        !signet_tests::scrape(agent_metrics)
            .await
            .unwrap()
            .samples
            .is_empty()
    );
    // The CA watches pods for ztunnel's impersonation (node_accounts are
    // set) and publishes its root for istio-agent: both reach the fake.
    let (mut published, mut watched) = (false, false);
    for _ in 0..1000 {
        published = fake.config_map("default", "istio-ca-root-cert").is_some();
        watched = fake
            .requests()
            .iter()
            .filter_map(signet_k8s::fake::Request::rbac)
            .any(|(_, resource, verb)| resource == "pods" && verb == "watch");
        if published && watched {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(published, "istio-ca-root-cert was not published");
    assert!(watched, "the CA does not watch pods");
    // Every call the CA made is one the chart's RBAC grants.
    for r in fake.requests() {
        let (group, resource, verb) = r.rbac().unwrap();
        assert!(
            signet_k8s::rbac::allowed(signet_k8s::rbac::CA_RBAC, &group, &resource, &verb),
            "{r:?}"
        );
    }
    drop(agent);
    drop(ca);
}

const REPLICAS: &[&str] = &[
    "--set",
    "ca.replicas=3",
    "--set",
    "ca.store.secretName=signet-ca-store",
];

/// Three replicas on a PostgreSQL Secret: strict validation, the store URL
/// from the Secret, a claim per pod, a PDB that lets one replica go, and
/// agents given the headless name that resolves to every replica.
#[test]
fn several_replicas_on_a_postgres_secret_validate_and_share_the_store() {
    let manifests = render(REPLICAS);
    validate_all_versions(&manifests);
    let docs = parse(&manifests);
    let sts = get(&docs, "StatefulSet", "signet-ca");
    assert_eq!(sts["spec"]["replicas"], 3);
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    let env = c["env"].as_array().unwrap();
    assert_eq!(env.len(), 1, "{env:?}");
    assert_eq!(env[0]["name"], "SIGNET_CA_STORE");
    let secret = &env[0]["valueFrom"]["secretKeyRef"];
    assert_eq!(secret["name"], "signet-ca-store");
    assert_eq!(secret["key"], "url");
    let claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
        .as_str()
        .unwrap();
    assert!(
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == claim && m["mountPath"] == "/var/lib/signet")
    );
    assert_eq!(
        get(&docs, "PodDisruptionBudget", "signet-ca")["spec"]["maxUnavailable"],
        1
    );
    let headless = get(&docs, "Service", "signet-ca-replicas");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(
        headless["spec"]["selector"],
        sts["spec"]["selector"]["matchLabels"]
    );
    let agent = toml(&docs, "signet-agent", "agent.toml");
    assert_eq!(agent["ca_address"], "signet-ca-replicas.signet.svc:8443");
    // The serving certificate names stay the Service's, which every replica carries.
    let server_name = agent["ca_server_name"].as_str().unwrap();
    let ca = toml(&docs, "signet-ca", "ca.toml");
    assert!(
        ca["server_names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == server_name),
        "{ca:?}"
    );

    // One replica, by default: no store Secret, no headless Service, the PDB as set.
    let docs = parse(&render(&[]));
    let sts = get(&docs, "StatefulSet", "signet-ca");
    assert_eq!(sts["spec"]["replicas"], 1);
    assert!(sts["spec"]["template"]["spec"]["containers"][0]["env"].is_null());
    assert!(find(&docs, "Service", "signet-ca-replicas").is_none());
    assert_eq!(
        get(&docs, "PodDisruptionBudget", "signet-ca")["spec"]["maxUnavailable"],
        0
    );
    let agent = toml(&docs, "signet-agent", "agent.toml");
    assert_eq!(agent["ca_address"], "signet-ca.signet.svc:8443");
}

/// The real signet-ca runs with the ca.toml rendered for several replicas
/// and its store from the variable the StatefulSet sets: it keeps its state
/// in PostgreSQL, not in its data directory, and issues.
#[tokio::test]
async fn the_real_ca_runs_on_postgres_with_the_rendered_replica_settings() {
    let docs = parse(&render(REPLICAS));
    let sts = get(&docs, "StatefulSet", "signet-ca");
    let var = sts["spec"]["template"]["spec"]["containers"][0]["env"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let ca_toml = get(&docs, "ConfigMap", "signet-ca")["data"]["ca.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    let trust_domain = toml(&docs, "signet-ca", "ca.toml")["trust_domain"]
        .as_str()
        .unwrap()
        .to_owned();

    let fake = signet_k8s::fake::FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).unwrap();
    let settings = rewrite(
        &rewrite(
            &ca_toml,
            "server_names = [",
            "server_names = [\"localhost\", ",
        ),
        "[k8s]\n",
        &format!("[k8s]\nkubeconfig = {:?}\n", kubeconfig.to_str().unwrap()),
    );
    std::fs::write(dir.path().join("ca.toml"), settings).unwrap();
    let db = signet_tests::postgres::Database::create();
    let ca = signet_tests::CaProcess::start(
        signet_tests::CaOptions::new(&trust_domain)
            .flag("config", dir.path().join("ca.toml").to_str().unwrap())
            .env(&var, db.url()),
    )
    .await
    .unwrap();
    assert_eq!(
        db.psql("SELECT value FROM meta WHERE key = 'trust_domain'")
            .unwrap(),
        trust_domain
    );
    let node = signet_tests::attest_node(&ca, "n1").await.unwrap();
    assert_eq!(
        db.psql(&format!(
            "SELECT COUNT(*) FROM audit WHERE action = 'attest_node' AND result = 'issued' AND spiffe_id = '{}'",
            node.spiffe_id
        ))
        .unwrap(),
        "1"
    );
    assert!(!ca.data_dir().join("signet.db").exists());
    drop(ca);
}
