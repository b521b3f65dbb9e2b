//! `signet install --render`: the Helm chart of deploy/charts/signet, embedded
//! in the binary, rendered without Helm by our own renderer of the template
//! subset the chart is written in.

mod template;
mod values;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use template::Template;

/// The chart's default values (deploy/charts/signet/values.yaml).
const VALUES: &str = include_str!("../../../deploy/charts/signet/values.yaml");

/// The chart's templates, in the order they are written out.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "ca-config.yaml",
        include_str!("../../../deploy/charts/signet/templates/ca-config.yaml"),
    ),
    (
        "ca-rbac.yaml",
        include_str!("../../../deploy/charts/signet/templates/ca-rbac.yaml"),
    ),
    (
        "ca-service.yaml",
        include_str!("../../../deploy/charts/signet/templates/ca-service.yaml"),
    ),
    (
        "ca-statefulset.yaml",
        include_str!("../../../deploy/charts/signet/templates/ca-statefulset.yaml"),
    ),
    (
        "agent-config.yaml",
        include_str!("../../../deploy/charts/signet/templates/agent-config.yaml"),
    ),
    (
        "agent-rbac.yaml",
        include_str!("../../../deploy/charts/signet/templates/agent-rbac.yaml"),
    ),
    (
        "agent-daemonset.yaml",
        include_str!("../../../deploy/charts/signet/templates/agent-daemonset.yaml"),
    ),
];

/// The chart's CustomResourceDefinitions (crds/), written as they are and
/// before the templates, as Helm installs them.
const CRDS: &[(&str, &str)] = &[(
    "identitypolicies.signet.dev.yaml",
    include_str!("../../../deploy/charts/signet/crds/identitypolicies.signet.dev.yaml"),
)];

/// Largest `-f` values file read.
const MAX_VALUES_FILE: u64 = 1 << 20;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write the Kubernetes manifests of the chart instead of installing
    /// (the only mode: apply them with `kubectl apply -f`).
    #[arg(long, required = true)]
    render: bool,
    /// Release name: prefix of every object's name.
    #[arg(long, default_value = "signet")]
    release: String,
    /// Namespace the objects go to.
    #[arg(long, short = 'n', default_value = "signet")]
    namespace: String,
    /// A values file layered over the chart's values.yaml (repeatable; later wins).
    #[arg(long = "values", short = 'f', value_name = "FILE")]
    values_files: Vec<PathBuf>,
    /// KEY=VALUE over the values, KEY dotted (repeatable; applied after -f files).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Write one file per template into DIR instead of one stream to stdout.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
}

/// Renders the chart with `args`' values; returns (template file name, manifest) pairs,
/// leaving out templates that render to nothing.
fn render(args: &Args) -> anyhow::Result<Vec<(&'static str, String)>> {
    check_name("release", &args.release)?;
    check_name("namespace", &args.namespace)?;
    let mut values =
        values::parse_yaml("values.yaml", VALUES).context("the chart's values.yaml")?;
    for file in &args.values_files {
        let text = read_bounded(file)?;
        let overlay = values::parse_yaml(&file.display().to_string(), &text)?;
        values::merge(&mut values, overlay, "")
            .with_context(|| format!("values file {}", file.display()))?;
    }
    for set in &args.set {
        values::apply_set(&mut values, set)?;
    }
    let root = template::root(values, &args.release, &args.namespace);
    let mut out: Vec<(&'static str, String)> = CRDS
        .iter()
        .map(|(name, text)| (*name, (*text).to_owned()))
        .collect();
    for (name, src) in TEMPLATES {
        let rendered = Template::parse(name, src)?.render(&root)?;
        if rendered
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        {
            out.push((*name, rendered));
        }
    }
    Ok(out)
}

/// Release and namespace names become object names and DNS labels.
fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        bail!(
            "{what} {name:?} must be 1-40 lowercase letters, digits or '-', not starting or ending with '-'"
        );
    }
    Ok(())
}

fn read_bounded(path: &Path) -> anyhow::Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("values file {}", path.display()))?;
    if meta.len() > MAX_VALUES_FILE {
        bail!(
            "values file {} is larger than {MAX_VALUES_FILE} bytes",
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("values file {}", path.display()))
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let manifests = render(args)?;
    match &args.output_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, text) in &manifests {
                let path = dir.join(name);
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        None => {
            let mut stream = String::new();
            for (name, text) in &manifests {
                let dir = if CRDS.iter().any(|(crd, _)| crd == name) {
                    "crds"
                } else {
                    "templates"
                };
                stream.push_str(&format!("---\n# Source: signet/{dir}/{name}\n"));
                stream.push_str(text.trim_end());
                stream.push('\n');
            }
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(stream.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other.context("writing to stdout")?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::values::Value;
    use super::*;

    fn chart_values() -> Value {
        values::parse_yaml("values.yaml", VALUES).unwrap()
    }

    fn args(set: &[&str]) -> Args {
        Args {
            render: true,
            release: "signet".into(),
            namespace: "spire".into(),
            values_files: Vec::new(),
            set: set.iter().map(|s| (*s).to_owned()).collect(),
            output_dir: None,
        }
    }

    #[test]
    fn every_template_parses_and_renders_with_the_defaults() {
        assert!(matches!(chart_values(), Value::Map(_)));
        let out = render(&args(&[])).unwrap();
        let names: Vec<_> = out.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), CRDS.len() + TEMPLATES.len(), "{names:?}");
    }

    /// A template added to the chart but not to TEMPLATES would be missing
    /// from `signet install --render` while Helm installs it.
    #[test]
    fn every_template_of_the_chart_is_embedded() {
        let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/charts/signet");
        for (dir, list) in [("templates", TEMPLATES), ("crds", CRDS)] {
            let mut on_disk: Vec<String> = std::fs::read_dir(chart.join(dir))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            on_disk.sort();
            let mut embedded: Vec<String> = list.iter().map(|(n, _)| (*n).to_owned()).collect();
            embedded.sort();
            assert_eq!(embedded, on_disk, "{dir}/");
        }
    }

    #[test]
    fn unknown_values_and_bad_names_are_refused() {
        let e = render(&args(&["ca.prot=1"])).unwrap_err();
        assert!(
            format!("{e:#}").contains("unknown value \"ca.prot\""),
            "{e:#}"
        );
        let mut a = args(&[]);
        a.release = "Bad_Name".into();
        assert!(render(&a).is_err());
    }

    #[test]
    fn host_pid_follows_the_pod_attestor() {
        let on = render(&args(&[])).unwrap();
        let off = render(&args(&["agent.podAttestor.enabled=false"])).unwrap();
        let ds = |r: &[(&str, String)]| {
            r.iter()
                .find(|(n, _)| *n == "agent-daemonset.yaml")
                .map(|(_, t)| t.clone())
                .unwrap()
        };
        assert!(ds(&on).contains("hostPID: true"));
        assert!(!ds(&off).contains("hostPID"));
    }
}
