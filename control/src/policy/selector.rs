//! Kubernetes label selectors (`metav1.LabelSelector`), checked once and then matched.
//!
//! Semantics as apimachinery's `LabelSelectorAsSelector`: every `matchLabels` pair must be
//! present with that value, and every `matchExpressions` requirement must hold: `In` (the key is
//! present with one of the values), `NotIn` (the key is absent or its value is none of them),
//! `Exists`, `DoesNotExist`. An empty selector selects everything. `In` and `NotIn` need at
//! least one value, `Exists` and `DoesNotExist` none; anything else is refused (the API server
//! refuses it too, so a manifest that has it would not mean what it says).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// One checked `matchExpressions` requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A checked label selector.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    labels: Vec<(String, String)>,
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector of `s`, or what is wrong with it, naming the field under the selector
    /// (`matchExpressions[0].operator`).
    pub fn new(s: &LabelSelector) -> Result<Selector, (String, String)> {
        let labels = s
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut requirements = Vec::new();
        for (i, e) in s.match_expressions.iter().flatten().enumerate() {
            let values = e.values.clone().unwrap_or_default();
            let field = |f: &str| format!("matchExpressions[{i}].{f}");
            if !matches!(
                e.operator.as_str(),
                "In" | "NotIn" | "Exists" | "DoesNotExist"
            ) {
                return Err((
                    field("operator"),
                    format!(
                        "unknown operator {:?} (In, NotIn, Exists, DoesNotExist)",
                        e.operator
                    ),
                ));
            }
            let needs_values = matches!(e.operator.as_str(), "In" | "NotIn");
            if needs_values && values.is_empty() {
                return Err((
                    field("values"),
                    format!("{} needs at least one value", e.operator),
                ));
            }
            if !needs_values && !values.is_empty() {
                return Err((field("values"), format!("{} takes no values", e.operator)));
            }
            let key = e.key.clone();
            requirements.push(match e.operator.as_str() {
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                _ => Requirement::DoesNotExist(key),
            });
        }
        Ok(Selector {
            labels,
            requirements,
        })
    }

    /// The selector that selects everything (`{}`).
    pub fn everything() -> Selector {
        Selector::default()
    }

    /// True when a set of `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.requirements.iter().all(|r| match r {
                Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                Requirement::Exists(k) => labels.contains_key(k),
                Requirement::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(yaml: &str) -> Result<Selector, (String, String)> {
        let s: LabelSelector = serde_yaml::from_str(yaml).expect("test selector");
        Selector::new(&s)
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_selects_everything() {
        let s = selector("{}").expect("valid");
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("pod", "a")])));
        assert_eq!(s, Selector::everything());
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let s = selector(
            "matchLabels: {app: web}\n\
             matchExpressions:\n\
             - {key: tier, operator: In, values: [front, edge]}\n\
             - {key: env, operator: NotIn, values: [prod]}\n\
             - {key: team, operator: Exists}\n\
             - {key: legacy, operator: DoesNotExist}\n",
        )
        .expect("valid");
        let ok = [("app", "web"), ("tier", "edge"), ("team", "net")];
        assert!(s.matches(&labels(&ok)));
        assert!(s.matches(&labels(&[("env", "dev"), ok[0], ok[1], ok[2]])));
        assert!(!s.matches(&labels(&[("env", "prod"), ok[0], ok[1], ok[2]])));
        assert!(!s.matches(&labels(&[("legacy", ""), ok[0], ok[1], ok[2]])));
        assert!(!s.matches(&labels(&[("app", "db"), ok[1], ok[2]])));
        assert!(!s.matches(&labels(&[ok[0], ("tier", "back"), ok[2]])));
        assert!(!s.matches(&labels(&[ok[0], ok[2]])), "In needs the key");
        assert!(!s.matches(&labels(&[ok[0], ok[1]])), "Exists");
    }

    #[test]
    fn malformed_expressions_are_refused() {
        let err = selector("matchExpressions: [{key: a, operator: Equals, values: [b]}]")
            .expect_err("unknown operator");
        assert_eq!(err.0, "matchExpressions[0].operator");
        let err = selector("matchExpressions: [{key: a, operator: In}]").expect_err("no values");
        assert_eq!(err.0, "matchExpressions[0].values");
        let err = selector("matchExpressions: [{key: a, operator: Exists, values: [b]}]")
            .expect_err("values on Exists");
        assert!(err.1.contains("takes no values"));
    }
}
