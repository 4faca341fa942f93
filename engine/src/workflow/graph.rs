//! The DAG of a workflow (petgraph): topological order, cycles, ancestors, and drawings.

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use std::collections::{BTreeSet, HashMap, VecDeque};

/// Nodes by id; an edge `a → b` means b needs a (its label says which output, or `after`).
#[derive(Debug, Default, Clone)]
pub struct Dag {
    graph: DiGraph<String, String>,
    index: HashMap<String, NodeIndex>,
}

impl Dag {
    /// Adds a node (idempotent).
    pub fn add_node(&mut self, id: &str) -> NodeIndex {
        if let Some(&ix) = self.index.get(id) {
            return ix;
        }
        let ix = self.graph.add_node(id.to_string());
        self.index.insert(id.to_string(), ix);
        ix
    }

    /// Adds an edge `from → to` with a label, once per label.
    pub fn add_edge(&mut self, from: &str, to: &str, label: &str) {
        let (a, b) = (self.add_node(from), self.add_node(to));
        let exists = self
            .graph
            .edges_connecting(a, b)
            .any(|e| e.weight() == label);
        if !exists {
            self.graph.add_edge(a, b, label.to_string());
        }
    }

    /// Node ids in an order where every node comes after all it needs (ties in insertion order),
    /// or one cycle as `[a, b, a]`.
    pub fn topological_order(&self) -> Result<Vec<String>, Vec<String>> {
        let mut indegree: Vec<usize> = self
            .graph
            .node_indices()
            .map(|ix| {
                self.graph
                    .neighbors_directed(ix, Direction::Incoming)
                    .count()
            })
            .collect();
        let mut ready: VecDeque<NodeIndex> = self
            .graph
            .node_indices()
            .filter(|ix| indegree[ix.index()] == 0)
            .collect();
        let mut order = Vec::with_capacity(indegree.len());
        while let Some(ix) = ready.pop_front() {
            order.push(self.graph[ix].clone());
            let mut next: Vec<NodeIndex> = self
                .graph
                .neighbors_directed(ix, Direction::Outgoing)
                .collect();
            next.sort();
            next.dedup();
            for n in next {
                let parallel = self.graph.edges_connecting(ix, n).count();
                indegree[n.index()] -= parallel;
                if indegree[n.index()] == 0 {
                    ready.push_back(n);
                }
            }
        }
        if order.len() == self.graph.node_count() {
            return Ok(order);
        }
        let stuck = |ix: NodeIndex| indegree[ix.index()] > 0;
        let start = self
            .graph
            .node_indices()
            .find(|ix| stuck(*ix))
            .expect("a node is left over");
        // Walk backwards along unprocessed predecessors until a node repeats: that is a cycle.
        let mut path = vec![start];
        loop {
            let here = *path.last().expect("path is never empty");
            let pred = self
                .graph
                .neighbors_directed(here, Direction::Incoming)
                .find(|p| stuck(*p))
                .expect("a stuck node has a stuck predecessor");
            if let Some(pos) = path.iter().position(|p| *p == pred) {
                let mut cycle: Vec<String> = path[pos..]
                    .iter()
                    .rev()
                    .map(|ix| self.graph[*ix].clone())
                    .collect();
                cycle.push(cycle[0].clone());
                return Err(cycle);
            }
            path.push(pred);
        }
    }

    /// Every node `id` needs, directly or not.
    pub fn ancestors(&self, id: &str) -> BTreeSet<String> {
        self.reachable(id, Direction::Incoming)
    }

    /// Every node that needs `id`, directly or not.
    pub fn descendants(&self, id: &str) -> BTreeSet<String> {
        self.reachable(id, Direction::Outgoing)
    }

    /// Nodes reachable from `id` along edges in `direction` (not `id` itself).
    fn reachable(&self, id: &str, direction: Direction) -> BTreeSet<String> {
        let Some(&start) = self.index.get(id) else {
            return BTreeSet::new();
        };
        let mut found = BTreeSet::new();
        let mut stack = vec![start];
        while let Some(ix) = stack.pop() {
            for next in self.graph.neighbors_directed(ix, direction) {
                if next != start && found.insert(self.graph[next].clone()) {
                    stack.push(next);
                }
            }
        }
        found
    }

    /// Direct predecessors of `id`.
    pub fn upstream(&self, id: &str) -> BTreeSet<String> {
        let Some(&ix) = self.index.get(id) else {
            return BTreeSet::new();
        };
        self.graph
            .neighbors_directed(ix, Direction::Incoming)
            .map(|p| self.graph[p].clone())
            .collect()
    }

    /// `(from, to, label)` for every edge.
    fn edges(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.graph.edge_references().map(|e| {
            (
                self.graph[e.source()].as_str(),
                self.graph[e.target()].as_str(),
                e.weight().as_str(),
            )
        })
    }

    /// A Mermaid flowchart; `types` gives each node's type for its label.
    pub fn to_mermaid(&self, types: &HashMap<String, String>) -> String {
        let mut out = String::from("flowchart LR\n");
        for id in self.graph.node_weights() {
            let ty = types.get(id).map(String::as_str).unwrap_or("");
            out.push_str(&format!(
                "  {}[\"{id}<br/><small>{ty}</small>\"]\n",
                mermaid_id(id)
            ));
        }
        for (from, to, label) in self.edges() {
            out.push_str(&format!(
                "  {} -->|{label}| {}\n",
                mermaid_id(from),
                mermaid_id(to)
            ));
        }
        out
    }

    /// A Graphviz digraph; `types` gives each node's type for its label.
    pub fn to_dot(&self, types: &HashMap<String, String>) -> String {
        let mut out = String::from("digraph workflow {\n  rankdir=LR;\n  node [shape=box];\n");
        for id in self.graph.node_weights() {
            let ty = types.get(id).map(String::as_str).unwrap_or("");
            out.push_str(&format!("  {id:?} [label=\"{id}\\n({ty})\"];\n"));
        }
        for (from, to, label) in self.edges() {
            let style = if label == "after" {
                ", style=dashed"
            } else {
                ""
            };
            out.push_str(&format!("  {from:?} -> {to:?} [label={label:?}{style}];\n"));
        }
        out.push_str("}\n");
        out
    }
}

fn mermaid_id(id: &str) -> String {
    id.replace(['-', '.'], "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(edges: &[(&str, &str)]) -> Dag {
        let mut d = Dag::default();
        for (a, b) in edges {
            d.add_edge(a, b, "out");
        }
        d
    }

    #[test]
    fn orders_dependencies_first() {
        let d = dag(&[("a", "b"), ("b", "c"), ("a", "c")]);
        assert_eq!(d.topological_order().unwrap(), ["a", "b", "c"]);
        assert_eq!(
            d.ancestors("c"),
            BTreeSet::from(["a".to_string(), "b".to_string()])
        );
        assert_eq!(d.descendants("b"), BTreeSet::from(["c".to_string()]));
    }

    #[test]
    fn reports_a_cycle_as_a_closed_path() {
        let d = dag(&[("x", "a"), ("a", "b"), ("b", "c"), ("c", "a")]);
        let cycle = d.topological_order().unwrap_err();
        assert_eq!(cycle.first(), cycle.last());
        assert_eq!(cycle.len(), 4, "{cycle:?}");
        for pair in cycle.windows(2) {
            assert!(d.descendants(&pair[0]).contains(&pair[1]));
        }
    }

    #[test]
    fn self_loop_is_a_cycle() {
        let d = dag(&[("a", "a")]);
        assert_eq!(d.topological_order().unwrap_err(), ["a", "a"]);
    }
}
