"""Crafted models, as an attacker with registry write access would make them: allow-listed types, hostile arrays.

Each function changes a fitted pipeline in place so that scikit-learn's
compiled predict would read outside memory or never stop; the pipeline still
serialises with skops and loads through the allow-list.
"""

from __future__ import annotations

import numpy as np


def _first_tree(pipeline):
    final = pipeline.steps[-1][1]
    return final.estimators_[len(final.estimators_) // 2].tree_


def _set_nodes(tree, change) -> None:
    state = tree.__getstate__()
    nodes = state["nodes"].copy()
    change(nodes)
    state["nodes"] = nodes
    tree.__setstate__(state)


def _last_split(nodes) -> int:
    return int(np.flatnonzero(nodes["left_child"] != -1)[-1])


def child_out_of_range(pipeline):
    """One tree's root points a million nodes past the end: every prediction walks into it."""

    def change(nodes):
        nodes["left_child"][0] = nodes["right_child"][0] = 10**6

    _set_nodes(_first_tree(pipeline), change)


def hidden_child_out_of_range(pipeline):
    """A split deep in one tree points past the end: the stored examples may never walk there."""
    _set_nodes(_first_tree(pipeline), lambda n: n["left_child"].__setitem__(_last_split(n), 10**6))


def negative_child(pipeline):
    _set_nodes(_first_tree(pipeline), lambda n: n["right_child"].__setitem__(_last_split(n), -7))


def feature_out_of_range(pipeline):
    """A split reads column 5,000 of an input that has a few dozen."""
    _set_nodes(_first_tree(pipeline), lambda n: n["feature"].__setitem__(_last_split(n), 5000))


def cycle(pipeline):
    """A split points back at the root: a walk that reaches it never ends."""
    _set_nodes(_first_tree(pipeline), lambda n: n["right_child"].__setitem__(_last_split(n), 0))


def hist_gradient_boosting_child(pipeline):
    """A histogram-gradient-boosting predictor's split points past its nodes."""
    nodes = pipeline.steps[-1][1]._predictors[-1][0].nodes
    split = int(np.flatnonzero(nodes["is_leaf"] == 0)[-1])
    nodes["right"][split] = 4_000_000


def hist_gradient_boosting_feature(pipeline):
    nodes = pipeline.steps[-1][1]._predictors[0][0].nodes
    nodes["feature_idx"][0] = -3


FOREST_ATTACKS = [child_out_of_range, hidden_child_out_of_range, negative_child, feature_out_of_range, cycle]
BOOSTING_ATTACKS = [hist_gradient_boosting_child, hist_gradient_boosting_feature]


# --- The boosters: XGBoost's and LightGBM's models are their own bytes inside the skops file. ---------------------
# These attacks rewrite the skops file itself, as someone with write access to the registry would: they never hand
# the crafted model to the library in the process that makes it (the loader itself may be what it breaks). Each is
# `bytes -> bytes` (a skops file in, the crafted skops file out); `on_file` marks them for `apply`.


def _on_file(attack):
    attack.on_file = True
    return attack


def apply(attack, data: bytes, trusted) -> bytes:
    """The skops file `data` after `attack`: a file attack rewrites its bytes, a pipeline attack its loaded objects."""
    import skops.io

    if getattr(attack, "on_file", False):
        return attack(data)
    pipeline = skops.io.loads(data, trusted=trusted)
    attack(pipeline)
    return skops.io.dumps(pipeline)


def _rewrite_zip(data: bytes, change) -> bytes:
    """The zip `data` with each member's bytes passed through change(name, bytes)."""
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            target.writestr(info, change(info.filename, source.read(info)))
    return out.getvalue()


def _booster_node(node):
    """The schema node of the (one) booster: XGBoost's or LightGBM's Booster object."""
    if isinstance(node, dict):
        if node.get("__class__") == "Booster":
            return node
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _booster_node(child)
        if found is not None:
            return found
    return None


# XGBoost stores its booster as UBJSON (binary JSON): {"Config": ..., "Model": ...}. Decoded keeping every type
# (typed arrays become numpy arrays of their big-endian type), changed, and encoded back exactly as XGBoost writes.
_UBJ_SCALARS = {b"i": ">i1", b"U": "u1", b"I": ">i2", b"l": ">i4", b"L": ">i8", b"d": ">f4", b"D": ">f8"}


def _ubj_read(buf: bytes, pos: int, marker: bytes | None = None):
    if marker is None:
        marker, pos = buf[pos : pos + 1], pos + 1
    if marker in _UBJ_SCALARS:
        dtype = np.dtype(_UBJ_SCALARS[marker])
        return np.frombuffer(buf, dtype, 1, pos)[0], pos + dtype.itemsize
    if marker in (b"T", b"F", b"Z"):
        return {b"T": True, b"F": False, b"Z": None}[marker], pos
    if marker == b"S":
        size, pos = _ubj_read(buf, pos)
        return buf[pos : pos + int(size)].decode(), pos + int(size)
    if marker == b"{":
        obj = {}
        while buf[pos : pos + 1] != b"}":
            size, pos = _ubj_read(buf, pos)
            key, pos = buf[pos : pos + int(size)].decode(), pos + int(size)
            obj[key], pos = _ubj_read(buf, pos)
        return obj, pos + 1
    if marker == b"[":
        if buf[pos : pos + 1] == b"$":
            kind = buf[pos + 1 : pos + 2]
            assert buf[pos + 2 : pos + 3] == b"#"
            count, pos = _ubj_read(buf, pos + 3)
            dtype = np.dtype(_UBJ_SCALARS[kind])
            return np.frombuffer(buf, dtype, int(count), pos).copy(), pos + int(count) * dtype.itemsize
        items = []
        if buf[pos : pos + 1] == b"#":  # counted, as XGBoost writes a list of mixed values
            count, pos = _ubj_read(buf, pos + 1)
            for _ in range(int(count)):
                item, pos = _ubj_read(buf, pos)
                items.append(item)
            return items, pos
        while buf[pos : pos + 1] != b"]":
            item, pos = _ubj_read(buf, pos)
            items.append(item)
        return items, pos + 1
    raise ValueError(f"UBJSON marker {marker!r} at {pos - 1}")


class Pairs(list):
    """An object written as its (key, value) pairs in order: UBJSON can repeat a key, a dict cannot."""


def _ubj_write(value) -> bytes:
    markers = {np.dtype(v): k for k, v in _UBJ_SCALARS.items()}

    def size(n: int) -> bytes:
        return b"L" + np.array(n, ">i8").tobytes()

    if value is True or value is False or value is None:
        return {True: b"T", False: b"F", None: b"Z"}[value]
    if isinstance(value, np.ndarray):
        return b"[$" + markers[value.dtype] + b"#" + size(len(value)) + value.tobytes()
    if isinstance(value, np.generic):
        return markers[value.dtype] + value.tobytes()
    if isinstance(value, int):
        return b"L" + np.array(value, ">i8").tobytes()
    if isinstance(value, str):
        return b"S" + size(len(value.encode())) + value.encode()
    if isinstance(value, (dict, Pairs)):
        pairs = value.items() if isinstance(value, dict) else value
        return b"{" + b"".join(size(len(k.encode())) + k.encode() + _ubj_write(v) for k, v in pairs) + b"}"
    if isinstance(value, list):
        return b"[#" + size(len(value)) + b"".join(_ubj_write(v) for v in value)
    raise TypeError(type(value))


def _xgboost(change):
    """A file attack that passes XGBoost's stored gbtree model ({"trees": ...}) through `change`, in place."""
    return _xgboost_state(lambda state: change(state["Model"]["learner"]["gradient_booster"]["model"]), change)


def _xgboost_state(change, named=None):
    """A file attack that passes XGBoost's whole stored state ({"Config": ..., "Model": ...}) through `change`."""
    return _xgboost_bytes(lambda member: _ubj_write(_changed(member, change)), named or change)


def _changed(member: bytes, change):
    state, end = _ubj_read(member, 0)
    assert end == len(member)
    replaced = change(state)
    return state if replaced is None else replaced


def _xgboost_bytes(change, named=None):
    """A file attack that passes the stored booster's bytes (XGBoost's UBJSON) through `change` (bytes -> bytes)."""
    named = named or change

    def attack(data: bytes) -> bytes:
        import io
        import json
        import zipfile

        with zipfile.ZipFile(io.BytesIO(data)) as z:
            node = _booster_node(json.loads(z.read("schema.json")))
        file = node["content"]["content"]["handle"]["file"]

        return _rewrite_zip(data, lambda name, member: change(member) if name == file else member)

    attack.__doc__ = named.__doc__
    attack.__name__ = named.__name__
    return _on_file(attack)


def _xgb_tree(model) -> dict:
    return model["trees"][len(model["trees"]) // 2]


def _xgb_last_split(tree) -> int:
    return int(np.flatnonzero(tree["left_children"] != -1)[-1])


@_xgboost
def xgboost_child_out_of_range(model):
    """One tree's root points a million nodes past the end: every prediction walks into it."""
    tree = _xgb_tree(model)
    tree["left_children"][0] = tree["right_children"][0] = 10**6


@_xgboost
def xgboost_hidden_child_out_of_range(model):
    """A split deep in one tree points past the end: the stored examples may never walk there."""
    tree = _xgb_tree(model)
    tree["left_children"][_xgb_last_split(tree)] = 10**6


@_xgboost
def xgboost_negative_child(model):
    tree = _xgb_tree(model)
    tree["right_children"][_xgb_last_split(tree)] = -7


@_xgboost
def xgboost_cycle(model):
    """A split points back at the root: a walk that reaches it never ends."""
    tree = _xgb_tree(model)
    tree["right_children"][_xgb_last_split(tree)] = 0


@_xgboost
def xgboost_feature_out_of_range(model):
    """A split reads column 5,000 of an input that has a few dozen."""
    tree = _xgb_tree(model)
    tree["split_indices"][_xgb_last_split(tree)] = 5000


@_xgboost
def xgboost_short_array(model):
    """One tree's split conditions lose their last entry: the node count says one more."""
    tree = _xgb_tree(model)
    tree["split_conditions"] = tree["split_conditions"][:-1]


@_xgboost
def xgboost_more_nodes_than_arrays(model):
    """The node count claims a thousand nodes more than the arrays hold."""
    tree = _xgb_tree(model)
    tree["tree_param"]["num_nodes"] = str(int(tree["tree_param"]["num_nodes"]) + 1000)


def _xgb_categorical_tree(model) -> dict:
    return next(t for t in model["trees"] if len(t["categories_nodes"]))


@_xgboost
def xgboost_category_segment_out_of_range(model):
    """A categorical split's category set starts a million entries past the tree's category list."""
    _xgb_categorical_tree(model)["categories_segments"][-1] = 10**6


@_xgboost
def xgboost_category_node_out_of_range(model):
    """A category set is attached to a node past the end of the tree."""
    _xgb_categorical_tree(model)["categories_nodes"][-1] = 10**6


@_xgboost
def xgboost_huge_category(model):
    """A category code of two billion: a bitset that large is a quarter of a gigabyte per split."""
    _xgb_categorical_tree(model)["categories"][-1] = 2**31 - 1


@_xgboost
def xgboost_negative_category(model):
    _xgb_categorical_tree(model)["categories"][-1] = -(2**20)


@_xgboost
def xgboost_tree_group_out_of_range(model):
    """A tree adds its leaf to output group 7 of a model that has one."""
    model["tree_info"][len(model["tree_info"]) // 2] = 7


@_xgboost
def xgboost_tree_missing(model):
    """The model says it has one tree more than it stores."""
    model["gbtree_model_param"]["num_trees"] = str(int(model["gbtree_model_param"]["num_trees"]) + 1)


@_xgboost
def xgboost_duplicate_tree_id(model):
    """Two trees claim the same slot: the other slot stays empty."""
    model["trees"][1]["id"] = model["trees"][0]["id"]


@_xgboost
def xgboost_iterations_past_trees(model):
    """The iteration index says the last round ends a hundred trees past the end."""
    model["iteration_indptr"][-1] = 120  # the array's type (int8 for a small model) holds no more


# What only a check of the stored bytes, before XGBoost parses them, can refuse (families/xgboost_trees.py
# check_stored): each an index XGBoost's loader follows unchecked, or a reading of the bytes it would take otherwise.


@_xgboost_bytes
def xgboost_truncated(member):
    """The stored booster loses its last hundred bytes: a size inside it now runs past the end."""
    return member[:-100]


@_xgboost_bytes
def xgboost_trailing_bytes(member):
    """Bytes after the stored model, which XGBoost's reader never looks at."""
    return member + b"{}"


@_xgboost_state
def xgboost_duplicate_key(state):
    """The model's trees twice: XGBoost keeps the first (crafted), a Python dict the last (honest)."""
    model = state["Model"]["learner"]["gradient_booster"]["model"]
    crafted = [dict(tree) for tree in model["trees"]]
    crafted[0] = {**crafted[0], "left_children": np.full_like(crafted[0]["left_children"], 10**6)}
    pairs = Pairs((key, value) for key, value in model.items() if key != "trees")
    pairs[:0] = [("trees", crafted), ("trees", model["trees"])]
    state["Model"]["learner"]["gradient_booster"]["model"] = pairs


@_xgboost_state
def xgboost_deep_nesting(state):
    """A value nested forty lists deep: a reader that recurses per level is a stack to exhaust."""
    nested: list = []
    for _ in range(40):
        nested = [nested]
    state["Model"]["learner"]["attributes"]["padding"] = nested


@_xgboost
def xgboost_parent_out_of_range(model):
    """A node's parent is node 1,000,000: the loader reads that node to set the child's is-left flag."""
    _xgb_tree(model)["parents"][-1] = 10**6


@_xgboost
def xgboost_category_size_out_of_range(model):
    """A category set that starts inside the tree's category list and runs a million entries past its end."""
    _xgb_categorical_tree(model)["categories_sizes"][-1] = 10**6


@_xgboost
def xgboost_category_nodes_unsorted(model):
    """The category nodes out of order: the loader, walking the nodes in order, never meets the rest."""
    nodes = _xgb_categorical_tree(model)["categories_nodes"]
    nodes[0], nodes[1] = nodes[1], nodes[0]


@_xgboost
def xgboost_empty_category_set(model):
    """A categorical split with no category at all."""
    _xgb_categorical_tree(model)["categories_sizes"][-1] = 0


@_xgboost
def xgboost_leaf_feature_out_of_range(model):
    """A leaf names feature 5,000: no walk reads it, but nothing stored should point outside the input."""
    tree = _xgb_tree(model)
    tree["split_indices"][int(np.flatnonzero(tree["left_children"] == -1)[0])] = 5000


@_xgboost
def xgboost_leaf_with_right_child(model):
    """A leaf (no left child) with a right child."""
    tree = _xgb_tree(model)
    tree["right_children"][int(np.flatnonzero(tree["left_children"] == -1)[0])] = 3


@_xgboost
def xgboost_float_split_indices(model):
    """Feature indices stored as floats: not what XGBoost writes, so not what this check reads as indices."""
    tree = _xgb_tree(model)
    tree["split_indices"] = tree["split_indices"].astype(">f4")


@_xgboost
def xgboost_count_not_decimal(model):
    """num_nodes written "2_9": Python's int() reads 29, a C++ parser 2."""
    param = _xgb_tree(model)["tree_param"]
    param["num_nodes"] = param["num_nodes"][0] + "_" + param["num_nodes"][1:]


@_xgboost
def xgboost_leaf_vector(model):
    """A tree of leaf vectors (a multi-output layout) in a model of one output."""
    _xgb_tree(model)["tree_param"]["size_leaf_vector"] = "3"


@_xgboost_state
def xgboost_two_targets(state):
    """Configuration and model agree on two targets: twice the outputs per row of a one-output family."""
    for part in ("Config", "Model"):
        state[part]["learner"]["learner_model_param"]["num_target"] = "2"


@_xgboost_state
def xgboost_dart(state):
    """A DART booster (per-tree drop weights, another layout) where this family builds gbtree."""
    state["Config"]["learner"]["gradient_booster"]["name"] = "dart"
    state["Model"]["learner"]["gradient_booster"]["name"] = "dart"


@_xgboost_state
def xgboost_config_disagrees(state):
    """The configuration says 5,000 features, the model its true count."""
    state["Config"]["learner"]["learner_model_param"]["num_feature"] = "5000"


@_xgboost
def xgboost_category_recoder(model):
    """A category recoder (text categories to codes): this family feeds codes and stores none."""
    model["cats"]["feature_segments"] = np.array([0, 10**6], ">i4")


@_xgboost_state
def xgboost_learner_not_an_object(state):
    """The model's learner is an array where an object belongs: a shape no check foresaw is refused all the same."""
    state["Model"]["learner"] = np.array([1, 2], ">i4")


XGBOOST_STORED_ATTACKS = [
    xgboost_truncated,
    xgboost_trailing_bytes,
    xgboost_duplicate_key,
    xgboost_deep_nesting,
    xgboost_parent_out_of_range,
    xgboost_category_size_out_of_range,
    xgboost_category_nodes_unsorted,
    xgboost_empty_category_set,
    xgboost_leaf_feature_out_of_range,
    xgboost_leaf_with_right_child,
    xgboost_float_split_indices,
    xgboost_count_not_decimal,
    xgboost_leaf_vector,
    xgboost_two_targets,
    xgboost_dart,
    xgboost_config_disagrees,
    xgboost_category_recoder,
    xgboost_learner_not_an_object,
]


XGBOOST_ATTACKS = [
    xgboost_child_out_of_range,
    xgboost_hidden_child_out_of_range,
    xgboost_negative_child,
    xgboost_cycle,
    xgboost_feature_out_of_range,
    xgboost_short_array,
    xgboost_more_nodes_than_arrays,
    xgboost_category_segment_out_of_range,
    xgboost_category_node_out_of_range,
    xgboost_huge_category,
    xgboost_negative_category,
    xgboost_tree_group_out_of_range,
    xgboost_tree_missing,
    xgboost_duplicate_tree_id,
    xgboost_iterations_past_trees,
    *XGBOOST_STORED_ATTACKS,
]


# LightGBM stores its booster as its text model, a string in the skops schema.
def _lightgbm(change):
    """A file attack that passes LightGBM's text model through `change` (text -> text)."""

    def attack(data: bytes) -> bytes:
        import json

        def rewrite(name: str, member: bytes) -> bytes:
            if name != "schema.json":
                return member
            schema = json.loads(member)
            handle = _booster_node(schema)["content"]["content"]["_handle"]
            handle["content"] = json.dumps(change(json.loads(handle["content"])))
            return json.dumps(schema).encode()

        return _rewrite_zip(data, rewrite)

    attack.__doc__ = change.__doc__
    attack.__name__ = change.__name__
    attack.change = change
    return _on_file(attack)


def _lgb_edit_tree(text: str, edit, which=None) -> str:
    """`text` with one tree's fields (name -> list of values) passed through edit; the middle tree unless `which`."""
    head, *trees = text.split("\nTree=")
    last, _, tail = trees[-1].partition("\nend of trees")
    trees[-1] = last
    pick = which(trees) if which else len(trees) // 2
    lines = trees[pick].split("\n")
    fields = {line.split("=", 1)[0]: line.split("=", 1)[1].split(" ") for line in lines[1:] if "=" in line}
    edit(fields)
    trees[pick] = "\n".join([lines[0], *(f"{k}={' '.join(map(str, v))}" for k, v in fields.items()), "", ""])
    # The header's tree_sizes say where each tree starts: kept true, so LightGBM reads the trees as written.
    sizes = " ".join(str(len(f"Tree={tree}\n".encode())) for tree in trees)
    head = "\n".join(f"tree_sizes={sizes}" if h.startswith("tree_sizes=") else h for h in head.split("\n"))
    return "\nTree=".join([head, *trees]) + "\nend of trees" + tail


def _lgb_edit_lines(text: str, edit, which=None) -> str:
    """`text` with one tree's `key=value` lines (a list) passed through edit, its tree_sizes kept true."""
    head, *trees = text.split("\nTree=")
    last, _, tail = trees[-1].partition("\nend of trees")
    trees[-1] = last
    pick = which(trees) if which else len(trees) // 2
    number, *lines = trees[pick].split("\n")
    body = lines[: lines.index("")]
    edit(body)
    trees[pick] = "\n".join([number, *body, "", ""])
    sizes = " ".join(str(len(f"Tree={tree}\n".encode())) for tree in trees)
    head = "\n".join(f"tree_sizes={sizes}" if h.startswith("tree_sizes=") else h for h in head.split("\n"))
    return "\nTree=".join([head, *trees]) + "\nend of trees" + tail


def _lgb_last_split(fields) -> int:
    return len(fields["left_child"]) - 1


def _lgb_categorical(trees) -> int:
    return next(i for i, t in enumerate(trees) if "\nnum_cat=0\n" not in t)


@_lightgbm
def lightgbm_child_out_of_range(text):
    """One tree's root points a million splits past the end: every prediction walks into it."""
    return _lgb_edit_tree(
        text, lambda f: f["left_child"].__setitem__(0, 10**6) or f["right_child"].__setitem__(0, 10**6)
    )


@_lightgbm
def lightgbm_leaf_out_of_range(text):
    """A split's child is leaf 1,000 of a tree with a handful."""
    return _lgb_edit_tree(text, lambda f: f["right_child"].__setitem__(_lgb_last_split(f), ~1000))


@_lightgbm
def lightgbm_cycle(text):
    """A split points back at the root: a walk that reaches it never ends."""
    return _lgb_edit_tree(text, lambda f: f["right_child"].__setitem__(_lgb_last_split(f), 0))


@_lightgbm
def lightgbm_feature_out_of_range(text):
    """A split reads column 5,000 of an input that has a few dozen."""
    return _lgb_edit_tree(text, lambda f: f["split_feature"].__setitem__(_lgb_last_split(f), 5000))


@_lightgbm
def lightgbm_short_array(text):
    """One tree's thresholds lose their last entry: num_leaves says one more."""
    return _lgb_edit_tree(text, lambda f: f["threshold"].pop())


@_lightgbm
def lightgbm_more_leaves_than_arrays(text):
    """num_leaves claims a thousand leaves more than the arrays hold."""
    return _lgb_edit_tree(text, lambda f: f.__setitem__("num_leaves", [int(f["num_leaves"][0]) + 1000]))


def _categorical_split(fields) -> int:
    return next(i for i, d in enumerate(fields["decision_type"]) if int(d) & 1)


@_lightgbm
def lightgbm_category_outside_boundaries(text):
    """A categorical split names bitset 1,000 of a tree that has a few."""

    def edit(f):
        f["threshold"][_categorical_split(f)] = 1000

    return _lgb_edit_tree(text, edit, _lgb_categorical)


@_lightgbm
def lightgbm_boundaries_outside_bitsets(text):
    """The category bitsets' boundaries start a million words before the bitsets."""
    return _lgb_edit_tree(text, lambda f: f["cat_boundaries"].__setitem__(0, -(10**6)), _lgb_categorical)


@_lightgbm
def lightgbm_tree_sizes_past_end(text):
    """The header's tree sizes say the last tree runs a megabyte past the end of the text."""
    lines = text.split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("tree_sizes="))
    sizes = lines[at].removeprefix("tree_sizes=").split(" ")
    sizes[-1] = str(int(sizes[-1]) + 10**6)
    lines[at] = "tree_sizes=" + " ".join(sizes)
    return "\n".join(lines)


@_lightgbm
def lightgbm_trees_per_iteration(text):
    """Seven trees per iteration (seven outputs per row) in a model of one class."""
    return text.replace("\nnum_tree_per_iteration=1\n", "\nnum_tree_per_iteration=7\n", 1)


# What only a check of the stored text, before LightGBM parses it, can refuse (families/lightgbm_trees.py
# check_stored): text LightGBM's parser would read otherwise than Python does, or follow unchecked.


def _lgb_line(name: str):
    return lambda lines: next(i for i, line in enumerate(lines) if line.startswith(f"{name}="))


@_lightgbm
def lightgbm_duplicate_key(text):
    """A tree's left children twice: the check would read one, LightGBM keeps the last (pointing past the end)."""

    def edit(lines):
        at = _lgb_line("left_child")(lines)
        lines.insert(at + 1, "left_child=" + " ".join(["1000000"] * len(lines[at].split(" "))))

    return _lgb_edit_lines(text, edit)


@_lightgbm
def lightgbm_line_without_equals(text):
    """A tree line without `=`: LightGBM scans on for one, past the line and the tree."""
    return _lgb_edit_lines(text, lambda lines: lines.insert(2, "garbage"))


@_lightgbm
def lightgbm_number_with_underscore(text):
    """A child written `1_0`: Python's int() reads 10, LightGBM's parser 1."""

    def edit(lines):
        at = _lgb_line("right_child")(lines)
        values = lines[at].removeprefix("right_child=").split(" ")
        values[0] = "1_0"
        lines[at] = "right_child=" + " ".join(values)

    return _lgb_edit_lines(text, edit)


@_lightgbm
def lightgbm_nul_byte(text):
    """A NUL inside the text: LightGBM reads a C string, and stops there."""
    return text.replace("\nTree=0\n", "\nTree=0\n\0", 1)


@_lightgbm
def lightgbm_too_many_lines(text):
    """A tree of 30 lines: LightGBM reads 22, and takes the rest for the next tree."""
    return _lgb_edit_lines(text, lambda lines: lines.extend(f"padding{i}=0" for i in range(30 - len(lines))))


@_lightgbm
def lightgbm_short_optional_array(text):
    """One tree's internal values lose one: LightGBM reads as many as the tree has splits."""

    def edit(lines):
        at = _lgb_line("internal_value")(lines)
        lines[at] = lines[at].rsplit(" ", 1)[0]

    return _lgb_edit_lines(text, edit)


@_lightgbm
def lightgbm_linear_tree(text):
    """The stored parameters turn on linear trees: leaves that read features of their own."""
    return text.replace("[linear_tree: 0]", "[linear_tree: 1]", 1)


def lightgbm_handle_fallback(data: bytes) -> bytes:
    """The text model stored as `handle`, not `_handle` (which Booster.__setstate__ reads when `_handle` is absent),
    and crafted: a root child a million splits past the end."""
    import json

    def rewrite(name: str, member: bytes) -> bytes:
        if name != "schema.json":
            return member
        schema = json.loads(member)
        state = _booster_node(schema)["content"]["content"]
        handle = state.pop("_handle")
        text = lightgbm_child_out_of_range.change(json.loads(handle["content"]))
        state["handle"] = {**handle, "content": json.dumps(text)}
        return json.dumps(schema).encode()

    return _rewrite_zip(data, rewrite)


_on_file(lightgbm_handle_fallback)


LIGHTGBM_STORED_ATTACKS = [
    lightgbm_duplicate_key,
    lightgbm_line_without_equals,
    lightgbm_number_with_underscore,
    lightgbm_nul_byte,
    lightgbm_too_many_lines,
    lightgbm_short_optional_array,
    lightgbm_linear_tree,
    lightgbm_handle_fallback,
]


LIGHTGBM_ATTACKS = [
    lightgbm_child_out_of_range,
    lightgbm_leaf_out_of_range,
    lightgbm_cycle,
    lightgbm_feature_out_of_range,
    lightgbm_short_array,
    lightgbm_more_leaves_than_arrays,
    lightgbm_category_outside_boundaries,
    lightgbm_boundaries_outside_bitsets,
    lightgbm_tree_sizes_past_end,
    lightgbm_trees_per_iteration,
    *LIGHTGBM_STORED_ATTACKS,
]
BOOSTER_ATTACKS = {"xgboost": XGBOOST_ATTACKS, "lightgbm": LIGHTGBM_ATTACKS}

# Every booster attack is refused before its library parses it (`stored`: the message of the family's check_stored,
# families/; tests/unit/test_model_checks.py holds us to it, in this process and in a probe child).
# `expect` is what the library itself does with it when nothing checks the stored bytes first (a first load in a
# child, skops alone):
#   "check":    the library loads it without harm, and check_structure refuses it (`refusal` is the message);
#   "load":     the library refuses it while loading (an error, the loading process lives);
#   "crash":    loading it, or first reading it back, kills the process: only a probe child may do it;
#   "answers":  the loader reads outside its arrays while loading and keeps what it read: what is left for the
#               checks is whatever it read (category codes they may refuse), else answers that differ from those
#               recorded (or a crash, or an allocation that fails);
#   "harmless": the library ignores it;
#   "stored":   only the stored check was written for it (what the library does was not established).
NODE = r"classifier\.(trees\[\d+\]|Tree=\d+): node \d+"


def _expect(kind: str, attacks, refusal: str = NODE) -> None:
    for attack in attacks:
        attack.expect, attack.refusal = kind, refusal


def _stored(attacks, refusal: str = NODE) -> None:
    for attack in attacks:
        attack.stored = refusal


_expect(
    "check",
    [
        xgboost_child_out_of_range,
        xgboost_hidden_child_out_of_range,
        xgboost_negative_child,
        xgboost_cycle,
        xgboost_feature_out_of_range,
        lightgbm_child_out_of_range,
        lightgbm_leaf_out_of_range,
        lightgbm_cycle,
        lightgbm_feature_out_of_range,
        lightgbm_category_outside_boundaries,
    ],
)
_expect("check", [xgboost_tree_group_out_of_range], r"classifier\.trees\[\d+\]: adds to output group 7 of 1")
_expect("check", [lightgbm_boundaries_outside_bitsets], r"classifier\.Tree=\d+: its category bitsets disagree")
_expect("check", [lightgbm_trees_per_iteration], r"num_tree_per_iteration=7 and num_class=1 disagree")
_expect(
    "load",
    [
        xgboost_short_array,
        xgboost_more_nodes_than_arrays,
        xgboost_huge_category,
        xgboost_negative_category,
        xgboost_tree_missing,
        xgboost_iterations_past_trees,
    ],
    r"skops cannot load the model: .*(Check failed|bad_alloc)|ran out of memory",
)
_expect(
    "crash",
    [
        xgboost_category_node_out_of_range,
        xgboost_duplicate_tree_id,
        lightgbm_short_array,
        lightgbm_more_leaves_than_arrays,
    ],
    r"crashed the probe process \(SIG(SEGV|ABRT)\)",
)
_expect(
    "answers",
    [xgboost_category_segment_out_of_range],
    # what it reads is whatever lies past the array: answers that differ, codes the checks refuse, or a crash
    r"stored example \d+ is answered|probabilities on the stored examples differ|crashed the probe process"
    r"|a category code outside|skops cannot load the model|ran out of memory",
)
_expect("harmless", [lightgbm_tree_sizes_past_end], "")
_expect("stored", [*XGBOOST_STORED_ATTACKS, *LIGHTGBM_STORED_ATTACKS], "")

_stored(
    [
        xgboost_child_out_of_range,
        xgboost_hidden_child_out_of_range,
        xgboost_negative_child,
        xgboost_cycle,
        xgboost_feature_out_of_range,
        xgboost_category_segment_out_of_range,
        xgboost_category_node_out_of_range,
        xgboost_category_size_out_of_range,
        lightgbm_child_out_of_range,
        lightgbm_leaf_out_of_range,
        lightgbm_cycle,
        lightgbm_feature_out_of_range,
        lightgbm_category_outside_boundaries,
    ]
)
_stored([lightgbm_handle_fallback], r"classifier\.Tree=\d+: node 0's left child 1000000 is outside the tree")
_stored([xgboost_tree_group_out_of_range], xgboost_tree_group_out_of_range.refusal)
_stored([lightgbm_boundaries_outside_bitsets], lightgbm_boundaries_outside_bitsets.refusal)
_stored([lightgbm_trees_per_iteration], lightgbm_trees_per_iteration.refusal)
_stored(
    [xgboost_short_array, xgboost_more_nodes_than_arrays], r"classifier\.trees\[\d+\]: its \w+ is not \d+ values of"
)
_stored([xgboost_huge_category, xgboost_negative_category], r"classifier\.trees\[\d+\]: a category code outside")
_stored(
    [xgboost_tree_missing, xgboost_iterations_past_trees],
    r"classifier: its tree count, tree_info and iteration index disagree with \d+ trees",
)
_stored([xgboost_duplicate_tree_id], r"classifier\.trees\[1\]: its id is 0, not its place 1")
_stored(
    [lightgbm_short_array, lightgbm_more_leaves_than_arrays], r"classifier\.Tree=\d+: its \w+ does not hold \d+ values"
)
_stored([lightgbm_tree_sizes_past_end], r"classifier: its tree_sizes are not the sizes of its \d+ trees")
_stored(
    [xgboost_truncated], r"classifier: the stored booster is not UBJSON XGBoost writes \(a size .* runs past the end"
)
_stored([xgboost_trailing_bytes], r"not UBJSON XGBoost writes \(2 bytes after the value\)")
_stored([xgboost_duplicate_key], r"not UBJSON XGBoost writes \(the key 'trees' appears twice")
_stored([xgboost_deep_nesting], r"not UBJSON XGBoost writes \(nested deeper than 32\)")
_stored([xgboost_parent_out_of_range], r"classifier\.trees\[\d+\]: node \d+'s parent 1000000 is not a node that points")
_stored([xgboost_category_nodes_unsorted], r"classifier\.trees\[\d+\]: its categories_nodes are not increasing")
_stored([xgboost_empty_category_set], r"classifier\.trees\[\d+\]: an empty category set")
_stored([xgboost_leaf_feature_out_of_range], r"classifier\.trees\[\d+\]: node \d+ \(a leaf\) splits on feature 5000")
_stored([xgboost_leaf_with_right_child], r"classifier\.trees\[\d+\]: node \d+ has a right child 3 and no left one")
_stored([xgboost_float_split_indices], r"classifier\.trees\[\d+\]: its split_indices is not \d+ values of >i4 or >i8")
_stored([xgboost_count_not_decimal], r"classifier\.trees\[\d+\]: its tree_param is not XGBoost's .*num_nodes='\d_\d+'")
_stored([xgboost_leaf_vector], r"classifier\.trees\[\d+\]: size_leaf_vector=3")
_stored([xgboost_two_targets], r"classifier: 1 parallel trees and 2 targets")
_stored([xgboost_dart], r"classifier: the stored booster is \('dart', 'dart'\), not gbtree")
_stored([xgboost_config_disagrees], r"classifier: the stored booster's configuration and model disagree on num_feature")
_stored([xgboost_category_recoder], r"classifier: a stored category recoder")
_stored([xgboost_learner_not_an_object], r"classifier: its stored xgboost\.core\.Booster cannot be checked")
_stored([lightgbm_duplicate_key], r"classifier\.Tree=\d+: left_child appears twice")
_stored([lightgbm_line_without_equals], r"classifier\.Tree=\d+: the line 'garbage' is not key=value")
_stored([lightgbm_number_with_underscore], r"classifier\.Tree=\d+: its right_child holds something other than numbers")
_stored([lightgbm_nul_byte], r"classifier: the stored text model is not plain ASCII lines")
_stored([lightgbm_too_many_lines], r"classifier\.Tree=\d+: its lines are not as LightGBM writes a tree")
_stored([lightgbm_short_optional_array], r"classifier\.Tree=\d+: its internal_value does not hold \d+ values")
_stored([lightgbm_linear_tree], r"classifier: a linear model")


def checked_after_load(crafted: list[bytes]) -> list[str | None]:
    """Each skops file loaded by its library and structure-checked: the refusal's message, or None if it passed.

    Run in a child process by tests that load crafted boosters with the library's own parser.
    """
    import skops.io

    from api.release.model_checks import check_structure
    from api.release.safe_model import ALLOWED_TYPES, RefusedModel

    answers: list[str | None] = []
    for data in crafted:
        reloaded = skops.io.loads(data, trusted=sorted(ALLOWED_TYPES))
        try:
            check_structure(reloaded)
            answers.append(None)
        except RefusedModel as exc:
            answers.append(str(exc))
    return answers
