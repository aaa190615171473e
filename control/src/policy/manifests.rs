//! A directory of YAML manifests: the NetworkPolicy source of the etcd and static datastores.
//!
//! # What this module promises
//!
//! - Every regular file (or symlink to one) directly in the directory whose name ends in
//!   `.yaml` or `.yml` is read, in name order; other files and subdirectories are not, nor names
//!   starting with `..` (the timestamped directory and `..data` link of a ConfigMap volume,
//!   whose files appear at the top level through symlinks).
//! - A file holds one or more YAML documents separated by `---`; an empty document is skipped.
//! - Each document is a `NetworkPolicy` (`networking.k8s.io/v1`), a `Namespace` (`v1`, for the
//!   labels namespace selectors see) or a `Pod` (`v1`, for static setups and tests). Anything
//!   else is refused with the file, the document and what was found: nothing is ignored
//!   silently. So is a field the type does not have (`ingres:` for `ingress:` would otherwise
//!   turn an allow rule into a default deny), a document that is not a mapping, and two objects
//!   of the same kind, namespace and name.
//! - Objects without `metadata.namespace` are in `default`, as `kubectl apply` puts them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_yaml::Value;

/// What a manifest directory holds.
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    /// The NetworkPolicies.
    pub policies: Vec<NetworkPolicy>,
    /// The Namespaces.
    pub namespaces: Vec<Namespace>,
    /// The Pods.
    pub pods: Vec<Pod>,
}

/// Why a manifest directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory or a file in it could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A document is not valid YAML.
    #[error("{file}: {source}")]
    Yaml {
        /// The file.
        file: PathBuf,
        /// The parser's error, with its line and column.
        source: serde_yaml::Error,
    },
    /// A document is YAML but not a manifest Weft takes.
    #[error("{file}: document {document}: {field}: {reason}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The document's number in the file, from 1.
        document: usize,
        /// The field at fault (`kind`, `spec.ingress[0].form`).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Two documents define the same object.
    #[error("{kind} {name} is defined twice: in {first} and in {second}")]
    Duplicate {
        /// The object's kind.
        kind: String,
        /// `namespace/name`, or the name of a Namespace.
        name: String,
        /// Where it was first defined.
        first: PathBuf,
        /// Where it was defined again.
        second: PathBuf,
    },
}

impl Manifests {
    /// Loads every manifest in `dir` (see the module docs).
    pub fn load_dir(dir: &Path) -> Result<Manifests, LoadError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LoadError::Io { path, source }
        };
        let mut files: Vec<PathBuf> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("..") || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
                continue;
            }
            // Follows symlinks, as a ConfigMap volume needs.
            if fs::metadata(&path).map_err(io(&path))?.is_file() {
                files.push(path);
            }
        }
        files.sort();
        let mut out = Manifests::default();
        let mut seen: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
        for file in files {
            let text = fs::read_to_string(&file).map_err(io(&file))?;
            out.add_str(&text, &file, &mut seen)?;
        }
        Ok(out)
    }

    /// Loads the documents of one YAML text, `file` naming it in errors.
    pub fn from_str(text: &str, file: &Path) -> Result<Manifests, LoadError> {
        let mut out = Manifests::default();
        out.add_str(text, file, &mut BTreeMap::new())?;
        Ok(out)
    }

    fn add_str(
        &mut self,
        text: &str,
        file: &Path,
        seen: &mut BTreeMap<(String, String), PathBuf>,
    ) -> Result<(), LoadError> {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let document = i + 1;
            let value = Value::deserialize(doc).map_err(|source| LoadError::Yaml {
                file: file.to_path_buf(),
                source,
            })?;
            let invalid = |field: &str, reason: String| LoadError::Invalid {
                file: file.to_path_buf(),
                document,
                field: field.to_string(),
                reason,
            };
            if value.is_null() {
                continue;
            }
            let Value::Mapping(map) = &value else {
                return Err(invalid("", "a manifest is a mapping".into()));
            };
            let text_of = |key: &str| map.get(key).and_then(Value::as_str).unwrap_or("");
            let (api_version, kind) = (text_of("apiVersion"), text_of("kind"));
            let (namespace, name) = match map.get("metadata") {
                Some(m) => (
                    m.get("namespace")
                        .and_then(Value::as_str)
                        .unwrap_or("default"),
                    m.get("name").and_then(Value::as_str).unwrap_or(""),
                ),
                None => ("default", ""),
            };
            if name.is_empty() {
                return Err(invalid("metadata.name", "missing".into()));
            }
            let key = match kind {
                "Namespace" => name.to_string(),
                _ => format!("{namespace}/{name}"),
            };
            match (api_version, kind) {
                ("networking.k8s.io/v1", "NetworkPolicy") => {
                    self.policies.push(typed(&value, &invalid)?);
                }
                ("v1", "Namespace") => self.namespaces.push(typed(&value, &invalid)?),
                ("v1", "Pod") => self.pods.push(typed(&value, &invalid)?),
                (_, "NetworkPolicy" | "Namespace" | "Pod") => {
                    return Err(invalid(
                        "apiVersion",
                        format!(
                            "{kind} {key} has apiVersion {api_version:?}; Weft reads {}",
                            match kind {
                                "NetworkPolicy" => "networking.k8s.io/v1",
                                _ => "v1",
                            }
                        ),
                    ))
                }
                _ => {
                    return Err(invalid(
                        "kind",
                        format!(
                            "unsupported kind {kind:?} (apiVersion {api_version:?}): a policy \
                             directory holds NetworkPolicy, Namespace and Pod manifests"
                        ),
                    ))
                }
            }
            if let Some(first) = seen.insert((kind.to_string(), key.clone()), file.to_path_buf()) {
                return Err(LoadError::Duplicate {
                    kind: kind.to_string(),
                    name: key,
                    first,
                    second: file.to_path_buf(),
                });
            }
        }
        Ok(())
    }
}

/// The typed object of `value`, refusing fields the type does not have.
fn typed<T: DeserializeOwned + Serialize>(
    value: &Value,
    invalid: &impl Fn(&str, String) -> LoadError,
) -> Result<T, LoadError> {
    let object: T =
        serde_yaml::from_value(value.clone()).map_err(|e| invalid("", e.to_string()))?;
    // k8s-openapi skips unknown fields: find them by writing the object back and comparing.
    let back = serde_yaml::to_value(&object).map_err(|e| invalid("", e.to_string()))?;
    if let Some(field) = unknown_field(value, &back, "") {
        return Err(invalid(&field, "no such field".into()));
    }
    Ok(object)
}

/// The path of the first key of `given` that `understood` lacks (nulls do not count).
fn unknown_field(given: &Value, understood: &Value, path: &str) -> Option<String> {
    match (given, understood) {
        (Value::Mapping(g), Value::Mapping(u)) => g.iter().find_map(|(k, v)| {
            let key = k.as_str().map_or_else(|| format!("{k:?}"), str::to_string);
            let here = if path.is_empty() {
                key
            } else {
                format!("{path}.{key}")
            };
            match u.get(k) {
                None if v.is_null() => None,
                None => Some(here),
                Some(uv) => unknown_field(v, uv, &here),
            }
        }),
        (Value::Sequence(g), Value::Sequence(u)) => g
            .iter()
            .zip(u)
            .enumerate()
            .find_map(|(i, (gv, uv))| unknown_field(gv, uv, &format!("{path}[{i}]"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weft-policy-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    const POLICY: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x, creationTimestamp: null}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {}}]
    ports: [{port: 80}]
";

    #[test]
    fn loads_multi_document_files_in_name_order() {
        let dir = scratch("load");
        fs::write(
            dir.join("b.yml"),
            format!("{POLICY}---\n# nothing here\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: x, labels: {{team: a}}}}\n"),
        )
        .expect("write");
        fs::write(
            dir.join("a.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nspec:\n  containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]\n",
        )
        .expect("write");
        fs::write(dir.join("notes.txt"), "kind: Deployment").expect("write");
        fs::create_dir_all(dir.join("..2024_01_01")).expect("dir");
        fs::write(dir.join("..2024_01_01/x.yaml"), "kind: Deployment").expect("write");
        let m = Manifests::load_dir(&dir).expect("loads");
        assert_eq!(m.policies.len(), 1);
        assert_eq!(m.namespaces.len(), 1);
        assert_eq!(m.pods.len(), 1);
        assert_eq!(m.policies[0].metadata.name.as_deref(), Some("web"));
        let _ = fs::remove_dir_all(&dir);
    }

    fn err(text: &str) -> String {
        Manifests::from_str(text, Path::new("policies/x.yaml"))
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn unknown_kinds_versions_and_fields_are_refused() {
        let e = err("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n");
        assert!(
            e.starts_with("policies/x.yaml: document 1: kind: unsupported kind \"Deployment\""),
            "{e}"
        );
        let e = err(&format!(
            "{POLICY}---\napiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {{name: old}}\n"
        ));
        assert!(
            e.contains("document 2: apiVersion: NetworkPolicy default/old"),
            "{e}"
        );
        let typo = POLICY.replace("  ingress:", "  ingres:");
        let e = err(&typo);
        assert_eq!(e, "policies/x.yaml: document 1: spec.ingres: no such field");
        let typo = POLICY.replace("ports: [{port: 80}]", "ports: [{prot: 80}]");
        assert_eq!(
            err(&typo),
            "policies/x.yaml: document 1: spec.ingress[0].ports[0].prot: no such field"
        );
        let e = err("- 1\n- 2\n");
        assert!(e.contains("a manifest is a mapping"), "{e}");
        let e = err("apiVersion: v1\nkind: Namespace\nmetadata: {}\n");
        assert!(e.contains("metadata.name: missing"), "{e}");
        let e = err("kind: [\n");
        assert!(e.starts_with("policies/x.yaml: "), "{e}");
    }

    #[test]
    fn duplicates_name_both_files() {
        let dir = scratch("dup");
        fs::write(dir.join("1.yaml"), POLICY).expect("write");
        fs::write(dir.join("2.yaml"), POLICY).expect("write");
        let e = Manifests::load_dir(&dir)
            .expect_err("duplicate")
            .to_string();
        assert!(e.starts_with("NetworkPolicy x/web is defined twice"), "{e}");
        assert!(e.contains("1.yaml") && e.contains("2.yaml"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }
}
