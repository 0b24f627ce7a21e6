//! Kubernetes NodeSelector semantics, evaluated against a Node.
//!
//! Terms are ORed, requirements within a term ANDed. Label requirements support `In`, `NotIn`,
//! `Exists`, `DoesNotExist`, `Gt` and `Lt`; field requirements support `metadata.name` only (as
//! the scheduler does). An empty term matches nothing (Kubernetes: "a null or empty node selector
//! term matches no objects"). An absent selector, or one with no terms, matches every node, as pie
//! does.

use k8s_openapi::api::core::v1::{NodeSelector, NodeSelectorRequirement, NodeSelectorTerm};

use crate::domain::node_facts::NodeFacts;

/// Whether `selector` selects `node`. `None` or no terms select every node.
pub fn matches(selector: Option<&NodeSelector>, node: &NodeFacts) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    if selector.node_selector_terms.is_empty() {
        return true;
    }
    selector
        .node_selector_terms
        .iter()
        .any(|term| term_matches(term, node))
}

/// Whether selecting every node is what `selector` means (so no node affinity is needed).
pub fn selects_all(selector: Option<&NodeSelector>) -> bool {
    selector.is_none_or(|s| s.node_selector_terms.is_empty())
}

/// `selector` as a Pod's required node affinity. The API server accepts a `matchFields`
/// requirement on `metadata.name` in a Pod only with exactly one value, while a PieProbe's node
/// selector (like a NodeSelector elsewhere) may list several: `In [a, b]` becomes one term per
/// value (terms are ORed, each keeping the term's other requirements), `NotIn [a, b]` one
/// requirement per value in the same term (requirements are ANDed). Everything else is kept as
/// it is, so the Pod selects exactly the nodes [`matches`] selects.
pub fn pod_affinity(selector: &NodeSelector) -> NodeSelector {
    let mut terms = Vec::new();
    for term in &selector.node_selector_terms {
        let fields = term.match_fields.as_deref().unwrap_or_default();
        // The field requirements, one value each; an `In` with several values multiplies the
        // term.
        let mut variants: Vec<Vec<NodeSelectorRequirement>> = vec![Vec::new()];
        for req in fields {
            let values = req.values.as_deref().unwrap_or_default();
            let single = |value: &String| NodeSelectorRequirement {
                values: Some(vec![value.clone()]),
                ..req.clone()
            };
            match req.operator.as_str() {
                "In" if values.len() > 1 => {
                    variants = variants
                        .into_iter()
                        .flat_map(|v| {
                            values.iter().map(move |value| {
                                let mut v = v.clone();
                                v.push(single(value));
                                v
                            })
                        })
                        .collect();
                }
                "NotIn" if values.len() > 1 => {
                    for v in &mut variants {
                        v.extend(values.iter().map(single));
                    }
                }
                _ => {
                    for v in &mut variants {
                        v.push(req.clone());
                    }
                }
            }
        }
        for fields in variants {
            terms.push(NodeSelectorTerm {
                match_expressions: term.match_expressions.clone(),
                match_fields: (!fields.is_empty()).then_some(fields),
            });
        }
    }
    NodeSelector {
        node_selector_terms: terms,
    }
}

fn term_matches(term: &NodeSelectorTerm, node: &NodeFacts) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, node.label(&r.key)))
        && fields.iter().all(|r| {
            // The scheduler supports only metadata.name; any other field selects nothing.
            r.key == "metadata.name" && requirement_matches(r, Some(node.name()))
        })
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| values.iter().all(|x| x != v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), [bound]) = (value, values) else {
                return false;
            };
            let (Ok(v), Ok(bound)) = (v.parse::<i64>(), bound.parse::<i64>()) else {
                return false;
            };
            if req.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::NodeBuilder;

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn term(
        exprs: Vec<NodeSelectorRequirement>,
        fields: Vec<NodeSelectorRequirement>,
    ) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: (!exprs.is_empty()).then_some(exprs),
            match_fields: (!fields.is_empty()).then_some(fields),
        }
    }

    fn sel(terms: Vec<NodeSelectorTerm>) -> NodeSelector {
        NodeSelector {
            node_selector_terms: terms,
        }
    }

    #[test]
    fn operator_table() {
        let node = NodeBuilder::new("worker-1")
            .label("role", "compute")
            .label("cores", "16")
            .label("zone", "a")
            .build();
        let cases: &[(NodeSelectorRequirement, bool)] = &[
            (req("role", "In", &["compute"]), true),
            (req("role", "In", &["storage", "compute"]), true),
            (req("role", "In", &["storage"]), false),
            (req("missing", "In", &["x"]), false),
            (req("role", "NotIn", &["storage"]), true),
            (req("role", "NotIn", &["compute"]), false),
            (req("missing", "NotIn", &["x"]), true),
            (req("role", "Exists", &[]), true),
            (req("missing", "Exists", &[]), false),
            (req("role", "DoesNotExist", &[]), false),
            (req("missing", "DoesNotExist", &[]), true),
            (req("cores", "Gt", &["8"]), true),
            (req("cores", "Gt", &["16"]), false),
            (req("cores", "Lt", &["32"]), true),
            (req("cores", "Lt", &["16"]), false),
            (req("cores", "Gt", &["8", "9"]), false),
            (req("role", "Gt", &["1"]), false),
            (req("cores", "Gt", &["x"]), false),
            (req("missing", "Lt", &["100"]), false),
            (req("role", "Matches", &["compute"]), false),
        ];
        for (r, want) in cases {
            let s = sel(vec![term(vec![r.clone()], vec![])]);
            assert_eq!(
                matches(Some(&s), &node),
                *want,
                "{} {} {:?}",
                r.key,
                r.operator,
                r.values
            );
        }
    }

    #[test]
    fn match_fields_on_metadata_name() {
        let node = NodeBuilder::new("worker-1").build();
        let cases: &[(NodeSelectorRequirement, bool)] = &[
            (req("metadata.name", "In", &["worker-1"]), true),
            (req("metadata.name", "In", &["worker-2"]), false),
            (req("metadata.name", "NotIn", &["worker-2"]), true),
            (req("metadata.name", "NotIn", &["worker-1"]), false),
            (req("metadata.uid", "In", &["worker-1"]), false),
        ];
        for (r, want) in cases {
            let s = sel(vec![term(vec![], vec![r.clone()])]);
            assert_eq!(matches(Some(&s), &node), *want, "{} {}", r.operator, r.key);
        }
    }

    #[test]
    fn terms_or_expressions_and() {
        let node = NodeBuilder::new("n1")
            .label("a", "1")
            .label("b", "2")
            .build();
        let a = req("a", "In", &["1"]);
        let b_wrong = req("b", "In", &["3"]);
        let name = req("metadata.name", "In", &["n1"]);
        // AND within a term: one failing requirement fails the term.
        assert!(!matches(
            Some(&sel(vec![term(vec![a.clone(), b_wrong.clone()], vec![])])),
            &node
        ));
        // Labels and fields are ANDed too.
        assert!(matches(
            Some(&sel(vec![term(vec![a.clone()], vec![name.clone()])])),
            &node
        ));
        assert!(!matches(
            Some(&sel(vec![term(vec![b_wrong.clone()], vec![name])])),
            &node
        ));
        // OR across terms.
        assert!(matches(
            Some(&sel(vec![
                term(vec![b_wrong.clone()], vec![]),
                term(vec![a], vec![])
            ])),
            &node
        ));
        assert!(!matches(
            Some(&sel(vec![term(vec![b_wrong], vec![])])),
            &node
        ));
    }

    #[test]
    fn empty_selector_semantics() {
        let node = NodeBuilder::new("n1").build();
        // No selector or no terms: every node, like pie.
        assert!(matches(None, &node));
        assert!(matches(Some(&sel(vec![])), &node));
        assert!(selects_all(None) && selects_all(Some(&sel(vec![]))));
        // An empty term matches nothing, and does not make the selector match everything.
        assert!(!matches(Some(&sel(vec![term(vec![], vec![])])), &node));
        assert!(!selects_all(Some(&sel(vec![term(vec![], vec![])]))));
    }

    #[test]
    fn pod_affinity_has_one_value_per_field_requirement_and_selects_the_same_nodes() {
        let nodes: Vec<NodeFacts> = ["a", "b", "c", "d"]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                NodeBuilder::new(n)
                    .label("zone", if i % 2 == 0 { "x" } else { "y" })
                    .build()
            })
            .collect();
        let selectors = [
            // What the API server refuses in a Pod: several names in one requirement.
            sel(vec![term(
                vec![],
                vec![req("metadata.name", "In", &["a", "b", "c"])],
            )]),
            sel(vec![term(
                vec![req("zone", "In", &["x"])],
                vec![req("metadata.name", "In", &["a", "b", "c"])],
            )]),
            sel(vec![term(
                vec![req("zone", "Exists", &[])],
                vec![req("metadata.name", "NotIn", &["a", "d"])],
            )]),
            sel(vec![
                term(vec![], vec![req("metadata.name", "In", &["a", "b"])]),
                term(vec![req("zone", "In", &["y"])], vec![]),
            ]),
            sel(vec![term(vec![], vec![req("metadata.name", "In", &["b"])])]),
        ];
        for selector in &selectors {
            let affinity = pod_affinity(selector);
            for t in &affinity.node_selector_terms {
                for f in t.match_fields.iter().flatten() {
                    assert_eq!(f.values.as_ref().map(Vec::len), Some(1), "{affinity:?}");
                }
            }
            for n in &nodes {
                assert_eq!(
                    matches(Some(&affinity), n),
                    matches(Some(selector), n),
                    "{selector:?} -> {affinity:?} on {:?}",
                    n.name()
                );
            }
        }
        // A selector without field requirements stays as it is.
        let plain = sel(vec![term(vec![req("zone", "In", &["x"])], vec![])]);
        assert_eq!(pod_affinity(&plain), plain);
    }
}
