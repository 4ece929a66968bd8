//! Tree ensembles (ONNX-ML `TreeEnsembleClassifier` and
//! `TreeEnsembleRegressor`), evaluated by weir rather than by tract.
//!
//! tract's own implementation walks, for every row and tree, the leaf list of
//! every earlier tree (its leaf lookup is an ndarray `skip`), so a 100-tree
//! random forest costs ~1.8M steps per row where the trees have ~1,100 nodes to
//! visit: 40-470x slower than onnxruntime. weir registers these two op types
//! with tract's ONNX parser, so a model keeps its other nodes (scalers, casts)
//! in tract and only the trees run here.
//!
//! Layout: every tree's nodes in one array of 16-byte nodes (feature, threshold,
//! [false child, true child]); a leaf points to itself both ways, and its
//! weights are a range of a table of (output column, weight). Rows are scored
//! in blocks, tree by tree, so a tree's nodes stay in cache across the block.
//! When every branch is `BRANCH_LEQ` and no node sends missing values to its
//! true branch (all that skl2onnx writes), eight rows walk a tree together for
//! exactly the tree's depth, each step `children[(x <= threshold) as usize]`:
//! no branch to mispredict, eight independent load chains in flight, and a row
//! that reached a leaf early stays there. NaN goes to the false branch, as in
//! onnxruntime. Other modes take a general, row-at-a-time path.
//!
//! Results follow onnxruntime's (`tree_ensemble_aggregator.h`): scores are
//! summed in f32 in tree order, base values added, then the post transform;
//! a binary classifier whose leaves name one class (skl2onnx's forests and
//! boosted trees) gives `[1 - s, s]` (or `[-s, s]` when some weights are
//! negative), with LOGISTIC `[1 - σ(s), σ(s)]`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::{NodeProto, TensorProto};
use tract_onnx::tract_hir::internal::*;

/// Rows scored together, tree by tree.
const BLOCK: usize = 128;
/// Rows walking one tree in lockstep.
const LANES: usize = 8;

/// One node: a branch `x[feature] <mode> threshold`, or a leaf (both children
/// itself; its weights are `leaves[node]`).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
struct Node {
    feature: u32,
    threshold: f32,
    /// [false child, true child], as node indices.
    children: [u32; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
    Leaf,
}

impl Mode {
    fn parse(s: &str) -> TractResult<Self> {
        Ok(match s {
            "BRANCH_LEQ" => Self::Leq,
            "BRANCH_LT" => Self::Lt,
            "BRANCH_GTE" => Self::Gte,
            "BRANCH_GT" => Self::Gt,
            "BRANCH_EQ" => Self::Eq,
            "BRANCH_NEQ" => Self::Neq,
            "LEAF" => Self::Leaf,
            other => bail!("unknown tree node mode {other}"),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Post {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

/// A parsed ensemble, ready to score.
#[derive(Debug, Clone, PartialEq)]
pub struct Forest {
    nodes: Vec<Node>,
    /// Per node: its mode and whether a missing value goes to the true branch
    /// (only read on the general path).
    modes: Vec<(Mode, bool)>,
    roots: Vec<u32>,
    /// Per tree (as `roots`), the longest path from root to leaf, in steps.
    depths: Vec<u32>,
    /// Per node, a leaf's range of `weights` (start, count).
    leaves: Vec<[u32; 2]>,
    weights: Vec<(u32, f32)>,
    /// Every branch is `BRANCH_LEQ` without missing-value tracking.
    all_leq: bool,
    /// Input features needed (the greatest feature index + 1).
    features: usize,
    /// Score columns: classes or targets.
    outputs: usize,
    base: Vec<f32>,
    post: Post,
    aggregate: Aggregate,
    /// Classifier: labels, and whether the binary rule applies.
    labels: Option<Vec<i64>>,
    binary: bool,
    positive_weights: bool,
}

/// The attributes naming leaves and their weights: classifiers say `class_*`,
/// regressors `target_*`.
struct LeafAttrs<'a> {
    treeids: &'a [i64],
    nodeids: &'a [i64],
    ids: &'a [i64],
    weights: &'a [f32],
}

impl Forest {
    fn parse(node: &NodeProto, classifier: bool) -> TractResult<Self> {
        for unsupported in ["nodes_values_as_tensor", "base_values_as_tensor"] {
            if node.get_attr_opt::<&TensorProto>(unsupported)?.is_some() {
                bail!("{unsupported} (double-precision trees) is not supported");
            }
        }
        let treeids = node.get_attr_slice::<i64>("nodes_treeids")?;
        let nodeids = node.get_attr_slice::<i64>("nodes_nodeids")?;
        let featureids = node.get_attr_slice::<i64>("nodes_featureids")?;
        let values = node.get_attr_slice::<f32>("nodes_values")?;
        let modes = node.get_attr_vec::<&str>("nodes_modes")?;
        let trues = node.get_attr_slice::<i64>("nodes_truenodeids")?;
        let falses = node.get_attr_slice::<i64>("nodes_falsenodeids")?;
        let n = treeids.len();
        let missing = node
            .get_attr_opt_slice::<i64>("nodes_missing_value_tracks_true")?
            .map(|m| m.to_vec())
            .unwrap_or_else(|| vec![0; n]);
        for (name, len) in [
            ("nodes_nodeids", nodeids.len()),
            ("nodes_featureids", featureids.len()),
            ("nodes_values", values.len()),
            ("nodes_modes", modes.len()),
            ("nodes_truenodeids", trues.len()),
            ("nodes_falsenodeids", falses.len()),
            ("nodes_missing_value_tracks_true", missing.len()),
        ] {
            if len != n {
                bail!("{name} has {len} entries, nodes_treeids {n}");
            }
        }
        let leaves = if classifier {
            LeafAttrs {
                treeids: node.get_attr_slice::<i64>("class_treeids")?,
                nodeids: node.get_attr_slice::<i64>("class_nodeids")?,
                ids: node.get_attr_slice::<i64>("class_ids")?,
                weights: node.get_attr_slice::<f32>("class_weights")?,
            }
        } else {
            LeafAttrs {
                treeids: node.get_attr_slice::<i64>("target_treeids")?,
                nodeids: node.get_attr_slice::<i64>("target_nodeids")?,
                ids: node.get_attr_slice::<i64>("target_ids")?,
                weights: node.get_attr_slice::<f32>("target_weights")?,
            }
        };
        let m = leaves.treeids.len();
        if leaves.nodeids.len() != m || leaves.ids.len() != m || leaves.weights.len() != m {
            bail!("the leaf weight attributes differ in length");
        }

        let index: HashMap<(i64, i64), u32> = treeids
            .iter()
            .zip(nodeids)
            .enumerate()
            .map(|(i, (t, n))| ((*t, *n), i as u32))
            .collect();
        if index.len() != n {
            bail!("two nodes share a (tree, node) id");
        }
        let find = |t: i64, id: i64, what: &str| {
            index
                .get(&(t, id))
                .copied()
                .ok_or_else(|| format_err!("tree {t}: {what} node {id} does not exist"))
        };

        // Leaf weights, grouped by leaf.
        let mut per_leaf: HashMap<u32, Vec<(u32, f32)>> = HashMap::new();
        let mut outputs = 0usize;
        let mut positive_weights = true;
        let mut class_ids = HashSet::new();
        for k in 0..m {
            let at = find(leaves.treeids[k], leaves.nodeids[k], "leaf")?;
            let id = leaves.ids[k];
            if id < 0 {
                bail!("negative class or target id {id}");
            }
            class_ids.insert(id);
            outputs = outputs.max(id as usize + 1);
            positive_weights &= leaves.weights[k] >= 0.0;
            per_leaf
                .entry(at)
                .or_default()
                .push((id as u32, leaves.weights[k]));
        }

        let mut nodes = Vec::with_capacity(n);
        let mut leaf_ranges = vec![[0u32; 2]; n];
        let mut node_modes = Vec::with_capacity(n);
        let mut weights = Vec::with_capacity(m);
        let mut features = 0usize;
        let mut all_leq = true;
        let mut children = HashSet::new();
        for (i, mode) in modes.iter().enumerate() {
            let mode = Mode::parse(mode)?;
            let tracks = missing[i] != 0;
            node_modes.push((mode, tracks));
            if mode == Mode::Leaf {
                let w = per_leaf.remove(&(i as u32)).unwrap_or_default();
                nodes.push(Node {
                    feature: 0,
                    threshold: 0.0,
                    children: [i as u32; 2],
                });
                leaf_ranges[i] = [weights.len() as u32, w.len() as u32];
                weights.extend(w);
                continue;
            }
            all_leq &= mode == Mode::Leq && !tracks;
            let f = featureids[i];
            if f < 0 {
                bail!(
                    "node {} of tree {} reads feature {f}",
                    nodeids[i],
                    treeids[i]
                );
            }
            features = features.max(f as usize + 1);
            let t = find(treeids[i], trues[i], "true child")?;
            let e = find(treeids[i], falses[i], "false child")?;
            if t == i as u32 || e == i as u32 {
                bail!(
                    "node {} of tree {} is its own child",
                    nodeids[i],
                    treeids[i]
                );
            }
            children.insert(t);
            children.insert(e);
            nodes.push(Node {
                feature: f as u32,
                threshold: values[i],
                children: [e, t],
            });
        }
        if let Some(at) = per_leaf.keys().next() {
            bail!("weights given for node {at}, which is not a leaf");
        }
        // Roots: the nodes no node points at, in the order their trees come.
        let mut roots = Vec::new();
        let mut seen_trees = HashSet::new();
        for (i, tree) in treeids.iter().enumerate() {
            if !children.contains(&(i as u32)) {
                if !seen_trees.insert(*tree) {
                    bail!("tree {tree} has more than one root");
                }
                roots.push(i as u32);
            }
        }
        // Every node reached exactly once from its tree's root: no cycles, no
        // shared subtrees, nothing unreachable (the walk always ends).
        let mut reached = vec![false; n];
        let mut depths = Vec::with_capacity(roots.len());
        for &root in &roots {
            let mut depth = 0;
            let mut stack = vec![(root, 0u32)];
            while let Some((i, d)) = stack.pop() {
                depth = depth.max(d);
                if std::mem::replace(&mut reached[i as usize], true) {
                    bail!(
                        "tree {}: node {} is reached twice",
                        treeids[i as usize],
                        nodeids[i as usize]
                    );
                }
                if node_modes[i as usize].0 != Mode::Leaf {
                    let [e, t] = nodes[i as usize].children;
                    stack.extend([(e, d + 1), (t, d + 1)]);
                }
            }
            depths.push(depth);
        }
        if let Some(i) = reached.iter().position(|r| !r) {
            bail!(
                "tree {}: node {} is not reachable from its root",
                treeids[i],
                nodeids[i]
            );
        }

        let post = match node
            .get_attr_opt::<&str>("post_transform")?
            .unwrap_or("NONE")
        {
            "NONE" => Post::None,
            "LOGISTIC" => Post::Logistic,
            "SOFTMAX" => Post::Softmax,
            "SOFTMAX_ZERO" => Post::SoftmaxZero,
            other => bail!("post_transform {other} is not supported"),
        };
        let base = node
            .get_attr_opt_slice::<f32>("base_values")?
            .map(|b| b.to_vec())
            .unwrap_or_default();
        let (labels, binary, aggregate) = if classifier {
            if node
                .get_attr_opt_vec::<&str>("classlabels_strings")?
                .is_some()
            {
                bail!("string class labels are not supported: export integer labels");
            }
            let labels = node.get_attr_vec::<i64>("classlabels_int64s")?;
            let binary = labels.len() == 2 && class_ids.len() == 1;
            if binary {
                if base.len() > 1 {
                    bail!(
                        "a binary classifier with one class id and {} base values",
                        base.len()
                    );
                }
                outputs = 2;
            } else {
                if outputs > labels.len() {
                    bail!("class id {} but {} labels", outputs - 1, labels.len());
                }
                outputs = labels.len();
                if !base.is_empty() && base.len() != outputs {
                    bail!("{} base values for {outputs} classes", base.len());
                }
            }
            (Some(labels), binary, Aggregate::Sum)
        } else {
            let targets = node.get_attr_opt::<i64>("n_targets")?.unwrap_or(1).max(1) as usize;
            if outputs > targets {
                bail!("target id {} but n_targets {targets}", outputs - 1);
            }
            outputs = targets;
            if !base.is_empty() && base.len() != outputs {
                bail!("{} base values for {outputs} targets", base.len());
            }
            let aggregate = match node
                .get_attr_opt::<&str>("aggregate_function")?
                .unwrap_or("SUM")
            {
                "SUM" => Aggregate::Sum,
                "AVERAGE" => Aggregate::Average,
                "MIN" => Aggregate::Min,
                "MAX" => Aggregate::Max,
                other => bail!("aggregate_function {other} is not supported"),
            };
            (None, false, aggregate)
        };
        Ok(Self {
            nodes,
            modes: node_modes,
            roots,
            depths,
            leaves: leaf_ranges,
            weights,
            all_leq,
            features,
            outputs,
            base,
            post,
            aggregate,
            labels,
            binary,
            positive_weights,
        })
    }

    /// The leaves `N` rows reach in tree `t` (every branch `BRANCH_LEQ`),
    /// walking together: `LANES` of them, or one. `rows[l]` is the offset of
    /// lane `l`'s row in `x`.
    #[inline(always)]
    fn leaves_leq<const N: usize>(&self, t: usize, x: &[f32], rows: [usize; N]) -> [u32; N] {
        let mut at = [self.roots[t]; N];
        for _ in 0..self.depths[t] {
            for l in 0..N {
                // SAFETY: every child index was resolved to a node of this
                // forest when it was parsed, and roots are nodes; `score`
                // checked that rows are at least `features` wide and that `x`
                // holds them, and every branch's feature is below `features`
                // (a leaf reads feature 0).
                unsafe {
                    let node = self.nodes.get_unchecked(at[l] as usize);
                    let v = *x.get_unchecked(rows[l] + node.feature as usize);
                    at[l] = *node.children.get_unchecked((v <= node.threshold) as usize);
                }
            }
        }
        at
    }

    /// The leaf `row` reaches in tree `t`, for any branch modes.
    fn leaf_general(&self, t: usize, row: &[f32]) -> u32 {
        let mut i = self.roots[t] as usize;
        loop {
            let (mode, tracks) = self.modes[i];
            if mode == Mode::Leaf {
                return i as u32;
            }
            let node = &self.nodes[i];
            let x = row[node.feature as usize];
            let v = node.threshold;
            let go = (tracks && x.is_nan())
                || match mode {
                    Mode::Leq => x <= v,
                    Mode::Lt => x < v,
                    Mode::Gte => x >= v,
                    Mode::Gt => x > v,
                    Mode::Eq => x == v,
                    Mode::Neq => x != v,
                    Mode::Leaf => unreachable!("leaves end the walk"),
                };
            i = node.children[go as usize] as usize;
        }
    }

    /// Adds leaf `leaf`'s weights to one row's scores.
    #[inline(always)]
    fn add_leaf(&self, leaf: u32, out: &mut [f32]) {
        let [from, count] = self.leaves[leaf as usize];
        for &(c, w) in &self.weights[from as usize..(from + count) as usize] {
            let s = &mut out[c as usize];
            match self.aggregate {
                Aggregate::Sum | Aggregate::Average => *s += w,
                Aggregate::Min => *s = s.min(w),
                Aggregate::Max => *s = s.max(w),
            }
        }
    }

    /// Raw scores per row (`rows * outputs`, row-major): every tree's leaf
    /// weights, combined by the aggregate.
    fn raw_scores(&self, x: &[f32], width: usize, rows: usize) -> Vec<f32> {
        let k = self.outputs;
        let init = match self.aggregate {
            Aggregate::Min => f32::INFINITY,
            Aggregate::Max => f32::NEG_INFINITY,
            _ => 0.0,
        };
        let mut scores = vec![init; rows * k];
        for start in (0..rows).step_by(BLOCK) {
            let end = (start + BLOCK).min(rows);
            for t in 0..self.roots.len() {
                if self.all_leq {
                    for first in (start..end).step_by(LANES) {
                        if end - first < LANES {
                            // Fewer rows than lanes (a batch of one, the
                            // block's tail): walk them one by one.
                            for r in first..end {
                                let [leaf] = self.leaves_leq(t, x, [r * width]);
                                self.add_leaf(leaf, &mut scores[r * k..(r + 1) * k]);
                            }
                            continue;
                        }
                        let lanes: [usize; LANES] = std::array::from_fn(|l| (first + l) * width);
                        let leaves = self.leaves_leq(t, x, lanes);
                        for (l, leaf) in leaves.iter().enumerate().take(end - first) {
                            let r = first + l;
                            self.add_leaf(*leaf, &mut scores[r * k..(r + 1) * k]);
                        }
                    }
                } else {
                    for r in start..end {
                        let leaf = self.leaf_general(t, &x[r * width..(r + 1) * width]);
                        self.add_leaf(leaf, &mut scores[r * k..(r + 1) * k]);
                    }
                }
            }
        }
        if self.aggregate == Aggregate::Average {
            let n = self.roots.len().max(1) as f32;
            scores.iter_mut().for_each(|s| *s /= n);
        }
        scores
    }

    /// Final scores (`rows * outputs`) and, for a classifier, labels.
    pub fn score(&self, x: &[f32], width: usize, rows: usize) -> TractResult<(Vec<f32>, Vec<i64>)> {
        if width < self.features.max(1) {
            bail!(
                "the trees read feature {} of rows with {width}",
                self.features.max(1) - 1
            );
        }
        if x.len() < rows * width {
            bail!("{} values for {rows} rows of {width}", x.len());
        }
        let mut scores = self.raw_scores(x, width, rows);
        let k = self.outputs;
        let sigmoid = |v: f32| 1.0 / (1.0 + (-v).exp());
        if self.binary {
            // One class named: column 0 holds s; the pair is derived from it.
            for r in 0..rows {
                let s = scores[r * 2] + self.base.first().copied().unwrap_or(0.0);
                let (a, b) = match self.post {
                    Post::Logistic => {
                        let p = sigmoid(s);
                        (1.0 - p, p)
                    }
                    Post::None if self.positive_weights => (1.0 - s, s),
                    _ => (-s, s),
                };
                scores[r * 2] = a;
                scores[r * 2 + 1] = b;
            }
        } else {
            for r in 0..rows {
                let out = &mut scores[r * k..(r + 1) * k];
                for (s, b) in out.iter_mut().zip(&self.base) {
                    *s += b;
                }
                match self.post {
                    Post::None => {}
                    Post::Logistic => out.iter_mut().for_each(|s| *s = sigmoid(*s)),
                    Post::Softmax | Post::SoftmaxZero => {
                        let zero = self.post == Post::SoftmaxZero;
                        let max = out
                            .iter()
                            .filter(|v| !zero || **v != 0.0)
                            .fold(f32::NEG_INFINITY, |a, v| a.max(*v));
                        let mut sum = 0.0;
                        for s in out.iter_mut() {
                            if !(zero && *s == 0.0) {
                                *s = (*s - max).exp();
                                sum += *s;
                            }
                        }
                        for s in out.iter_mut() {
                            if !(zero && *s == 0.0) {
                                *s /= sum;
                            }
                        }
                    }
                }
            }
        }
        let labels = match &self.labels {
            None => Vec::new(),
            Some(labels) => (0..rows)
                .map(|r| {
                    let out = &scores[r * k..(r + 1) * k];
                    let best = out
                        .iter()
                        .enumerate()
                        .fold(0, |b, (i, v)| if *v > out[b] { i } else { b });
                    labels[best.min(labels.len() - 1)]
                })
                .collect(),
        };
        Ok((scores, labels))
    }
}

/// Registers weir's tree ensembles with tract's ONNX parser, replacing tract's.
pub fn register(ops: &mut OnnxOpRegister) {
    ops.insert("TreeEnsembleClassifier", parse_classifier);
    ops.insert("TreeEnsembleRegressor", parse_regressor);
}

fn parse_classifier(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    parse(node, true)
}

fn parse_regressor(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    parse(node, false)
}

fn parse(node: &NodeProto, classifier: bool) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    if node.domain != "ai.onnx.ml" {
        bail!(
            "{} from domain '{}', not ai.onnx.ml",
            node.op_type,
            node.domain
        );
    }
    let forest = Forest::parse(node, classifier)
        .with_context(|| format!("reading tree ensemble {}", node.name))?;
    Ok((
        expand(TreesExpansion {
            forest: Arc::new(forest),
        }),
        vec![],
    ))
}

#[derive(Debug, Clone)]
struct TreesExpansion {
    forest: Arc<Forest>,
}

impl Expansion for TreesExpansion {
    fn name(&self) -> StaticName {
        "WeirTreeEnsemble".into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(if self.forest.labels.is_some() { 2 } else { 1 })
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        let scores = if self.forest.labels.is_some() {
            check_output_arity(outputs, 2)?;
            s.equals(&outputs[0].datum_type, i64::datum_type())?;
            s.equals(&outputs[0].rank, 1)?;
            s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
            &outputs[1]
        } else {
            check_output_arity(outputs, 1)?;
            &outputs[0]
        };
        s.equals(&scores.datum_type, f32::datum_type())?;
        s.equals(&scores.rank, 2)?;
        s.equals(&scores.shape[0], &inputs[0].shape[0])?;
        s.equals(&scores.shape[1], self.forest.outputs.to_dim())?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(
            prefix,
            TreesOp {
                forest: self.forest.clone(),
            },
            inputs,
        )
    }
}

#[derive(Debug, Clone)]
struct TreesOp {
    forest: Arc<Forest>,
}

impl PartialEq for TreesOp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.forest, &other.forest)
    }
}
impl Eq for TreesOp {}

impl Op for TreesOp {
    fn name(&self) -> StaticName {
        "WeirTreeEnsemble".into()
    }

    op_as_typed_op!();
}

impl EvalOp for TreesOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let input = input.cast_to::<f32>()?;
        let view = input.to_plain_array_view::<f32>()?;
        let shape = view.shape().to_vec();
        let [rows, width] = shape[..] else {
            bail!("tree ensemble input of shape {shape:?}: expected [rows, features]");
        };
        let owned;
        let x = match view.as_slice() {
            Some(x) => x,
            None => {
                owned = view.iter().copied().collect::<Vec<f32>>();
                &owned
            }
        };
        let (scores, labels) = self.forest.score(x, width, rows)?;
        let scores = Tensor::from_shape(&[rows, self.forest.outputs], &scores)?;
        Ok(if self.forest.labels.is_some() {
            tvec!(
                Tensor::from_shape(&[rows], &labels)?.into_tvalue(),
                scores.into_tvalue()
            )
        } else {
            tvec!(scores.into_tvalue())
        })
    }
}

impl TypedOp for TreesOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = inputs[0].shape[0].clone();
        let scores = f32::fact(&[n.clone(), self.forest.outputs.to_dim()]);
        Ok(if self.forest.labels.is_some() {
            tvec!(i64::fact(&[n]), scores)
        } else {
            tvec!(scores)
        })
    }

    as_op!();
}
