//! The stage graph: nodes are stages, edges are `{ from: ... }` references (plus the implicit
//! edges of leakage checks against `eval` datasets). Built with petgraph.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use crate::diag::{Diagnostic, Diagnostics, did_you_mean};
use crate::recipe::{Recipe, source_map::join};
use crate::spec::kind::DataRole;
use crate::spec::settings::Input;

/// Why one stage depends on another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeKind {
    /// The downstream stage reads `output` (or the whole artifact) at input path `input`.
    Reads {
        input: String,
        output: Option<String>,
    },
    /// The downstream dataset is checked for leakage against this `eval` dataset.
    LeakageCheck,
}

#[derive(Debug, Clone)]
pub struct Dag {
    pub graph: DiGraph<usize, EdgeKind>,
    /// Node of each stage, by the stage's index in `Recipe::stages`.
    pub nodes: Vec<NodeIndex>,
    /// Stage indices in run order: topological, ties broken by file order.
    pub order: Vec<usize>,
}

impl Dag {
    pub fn build(recipe: &Recipe) -> Result<Dag, Diagnostics> {
        let mut graph = DiGraph::new();
        let nodes: Vec<NodeIndex> = (0..recipe.stages.len())
            .map(|i| graph.add_node(i))
            .collect();
        let index: HashMap<&str, usize> = recipe
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let mut diags = Diagnostics::default();

        for (i, stage) in recipe.stages.iter().enumerate() {
            for (rel, input) in stage.spec.inputs() {
                let Input::Stage(r) = input else { continue };
                let at = join(&join(&join("stages", &stage.name), &rel), "from");
                let loc = recipe.value_location(&at);
                let Some(&up) = index.get(r.stage()) else {
                    if recipe.broken.iter().any(|(n, _)| n == r.stage()) {
                        continue; // that stage's own error is reported already
                    }
                    diags.push(
                        Diagnostic::new(format!(
                            "stage `{}` reads from unknown stage `{}`",
                            stage.name,
                            r.stage()
                        ))
                        .at(loc)
                        .help(
                            did_you_mean(r.stage(), recipe.stage_names()).unwrap_or_else(|| {
                                format!(
                                    "stages in this recipe: {}",
                                    recipe.stage_names().collect::<Vec<_>>().join(", ")
                                )
                            }),
                        ),
                    );
                    continue;
                };
                let upstream = &recipe.stages[up].spec;
                let produced = match r.output() {
                    None => Some(upstream.artifact_type()),
                    Some(out) => upstream
                        .outputs()
                        .into_iter()
                        .find(|(n, _)| *n == out)
                        .map(|(_, t)| t),
                };
                let Some(ty) = produced else {
                    let names: Vec<&str> = upstream.outputs().into_iter().map(|(n, _)| n).collect();
                    let out = r.output().unwrap_or_default();
                    diags.push(
                        Diagnostic::new(format!("stage `{}` has no output `{out}`", r.stage()))
                            .at(loc)
                            .help(did_you_mean(out, names.iter().copied()).unwrap_or_else(|| {
                                format!("`{}` produces: {}", r.stage(), names.join(", "))
                            })),
                    );
                    continue;
                };
                let wanted = stage.spec.accepts(&rel);
                if !wanted.contains(&ty) {
                    let want: Vec<&str> = wanted.iter().map(|t| t.describe()).collect();
                    diags.push(
                        Diagnostic::new(format!(
                            "`{rel}` of stage `{}` needs {}, but `{}` is {}",
                            stage.name,
                            want.join(" or "),
                            r.from,
                            ty.describe()
                        ))
                        .at(loc),
                    );
                    continue;
                }
                graph.add_edge(
                    nodes[up],
                    nodes[i],
                    EdgeKind::Reads {
                        input: rel,
                        output: r.output().map(str::to_owned),
                    },
                );
            }
        }
        if !diags.is_empty() {
            return Err(diags);
        }
        if let Some(cycle) = find_cycle(&graph) {
            let names: Vec<&str> = cycle
                .iter()
                .map(|&n| recipe.stages[graph[n]].name.as_str())
                .collect();
            // Point at the reference that closes the cycle: the first stage reading from the last.
            let closing = &recipe.stages[graph[cycle[1]]];
            let loc = closing
                .spec
                .inputs()
                .into_iter()
                .find_map(|(rel, inp)| match inp {
                    Input::Stage(r) if r.stage() == names[0] => recipe
                        .value_location(&join(&join(&join("stages", &closing.name), &rel), "from")),
                    _ => None,
                });
            return Err(
                Diagnostic::new(format!("stages form a cycle: {}", names.join(" -> ")))
                    .at(loc)
                    .help("a stage cannot read, directly or indirectly, from its own output")
                    .into(),
            );
        }
        add_leakage_edges(recipe, &mut graph, &nodes);
        let order = topo_order(&graph, &nodes);
        Ok(Dag {
            graph,
            nodes,
            order,
        })
    }

    /// Indices of the stages `i` reads from directly.
    pub fn upstream(&self, i: usize) -> Vec<usize> {
        let set: BTreeSet<usize> = self
            .graph
            .neighbors_directed(self.nodes[i], Direction::Incoming)
            .map(|n| self.graph[n])
            .collect();
        set.into_iter().collect()
    }

    /// Edges into stage `i`: (upstream stage index, edge).
    pub fn incoming(&self, i: usize) -> Vec<(usize, &EdgeKind)> {
        self.graph
            .edges_directed(self.nodes[i], Direction::Incoming)
            .map(|e| (self.graph[e.source()], e.weight()))
            .collect()
    }

    /// `i` and everything it depends on, transitively.
    pub fn ancestors(&self, i: usize) -> BTreeSet<usize> {
        self.closure(i, Direction::Incoming)
    }

    /// `i` and everything that depends on it, transitively.
    pub fn descendants(&self, i: usize) -> BTreeSet<usize> {
        self.closure(i, Direction::Outgoing)
    }

    fn closure(&self, i: usize, dir: Direction) -> BTreeSet<usize> {
        let mut seen = BTreeSet::from([i]);
        let mut todo = vec![self.nodes[i]];
        while let Some(n) = todo.pop() {
            for m in self.graph.neighbors_directed(n, dir) {
                if seen.insert(self.graph[m]) {
                    todo.push(m);
                }
            }
        }
        seen
    }
}

/// One cycle as a node path `[a, b, ..., a]`, if the graph has any.
fn find_cycle(graph: &DiGraph<usize, EdgeKind>) -> Option<Vec<NodeIndex>> {
    for scc in petgraph::algo::tarjan_scc(graph) {
        let start = scc[0];
        if scc.len() == 1 && !graph.contains_edge(start, start) {
            continue;
        }
        // Walk forward inside the component until we come back to `start` (BFS for the shortest).
        let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
        let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(n) = queue.pop_front() {
            for m in graph.neighbors_directed(n, Direction::Outgoing) {
                if m == start {
                    // Follow the BFS parents from `n` back to `start`, then close the loop.
                    let mut path = vec![n];
                    let mut cur = n;
                    while cur != start {
                        cur = prev[&cur];
                        path.push(cur);
                    }
                    path.reverse();
                    // Start the loop at the stage written first in the recipe, so the message
                    // reads in the order the user wrote the stages.
                    let first = (0..path.len()).min_by_key(|&k| graph[path[k]]).unwrap_or(0);
                    path.rotate_left(first);
                    path.push(path[0]);
                    return Some(path);
                }
                if members.contains(&m) && !prev.contains_key(&m) && m != start {
                    prev.insert(m, n);
                    queue.push_back(m);
                }
            }
        }
    }
    None
}

/// Every `train` dataset depends on every `eval` dataset it is checked against, unless the eval
/// dataset is itself derived from it (that edge would be a cycle).
fn add_leakage_edges(recipe: &Recipe, graph: &mut DiGraph<usize, EdgeKind>, nodes: &[NodeIndex]) {
    let role = |i: usize| recipe.stages[i].spec.data_role();
    for e in 0..recipe.stages.len() {
        if role(e) != Some(DataRole::Eval) {
            continue;
        }
        for t in 0..recipe.stages.len() {
            if role(t) != Some(DataRole::Train) {
                continue;
            }
            if petgraph::algo::has_path_connecting(&*graph, nodes[t], nodes[e], None) {
                continue;
            }
            graph.add_edge(nodes[e], nodes[t], EdgeKind::LeakageCheck);
        }
    }
}

fn topo_order(graph: &DiGraph<usize, EdgeKind>, nodes: &[NodeIndex]) -> Vec<usize> {
    let mut indegree: Vec<usize> = nodes
        .iter()
        .map(|&n| graph.neighbors_directed(n, Direction::Incoming).count())
        .collect();
    let mut ready: BinaryHeap<Reverse<usize>> = (0..nodes.len())
        .filter(|&i| indegree[i] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for m in graph.neighbors_directed(nodes[i], Direction::Outgoing) {
            let j = graph[m];
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(Reverse(j));
            }
        }
    }
    order
}
