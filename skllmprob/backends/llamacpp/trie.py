"""Multi-token answers scored as a trie over the text's KV cache.

The listed token sequences of an :class:`~.exact.AnswerSpec` share leading tokens
(``" card arrival"``, ``" card linking"``, ``" Card Arrival"`` ...). Their proper
prefixes are the *nodes* of a trie; each node is evaluated once, after the
prompt, to read the next-token distribution its extensions need. Nodes are
evaluated level by level, a whole level per decode call: every branch of the
trie is its own llama.cpp sequence that shares the prompt's cache cells and its
ancestors' cells (``llama_memory_seq_cp``), at the positions a cold evaluation
of prompt + label would use.

Pruning (``label_prune``)
    Let ``T`` be the summed probability of every listed sequence's first token
    (as :class:`~.settings.LlamaCppBackend` documents) and ``cut = label_prune *
    T``. A node is evaluated only when its prefix probability is at least
    ``cut`` (and its parent was evaluated); a sequence that runs through a node
    that is not evaluated counts as 0. For sequences of two tokens this is
    exactly the earlier rule (the first token decides). The *pruned mass* ``D``
    is the sum of the probabilities of the nodes that were cut. Every class mass
    of :func:`~.exact.class_log_mass` is then within ``D`` of its exact value,
    and the classes' total is at most ``D`` away from the exact total (the
    events of the cut nodes cover every dropped sequence; see
    ``tests/backends/test_llamacpp_trie.py`` for the property). ``D`` is below
    ``cut`` times the number of cut nodes; :func:`answer_log_mass` returns it.

Classes cut whole
    A class none of whose sequences is scored (with many classes, most of them:
    " apple pay or google pay" after a text about a card) would count as 0, a
    log-mass of about -708 that no calibration can lift, however much more
    likely it is than the other unlikely classes. Such a class gets instead a
    share of each cut node its sequences run through: the node's probability
    divided evenly among the classes of all the sequences through it. Its mass
    is then between 0 and the summed probability of those nodes, as the exact
    mass is, so it is within ``D`` of the exact mass; the shares add up to at
    most the probability of the cut nodes, so the classes' total stays within
    ``D`` of the exact total. A class with one scored sequence (a one-token
    form, say) is never cut whole, so answers that all have one score as they
    did before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .exact import AnswerSpec, class_log_mass, log_softmax_at

__all__ = ["LabelTrie", "answer_log_mass", "build_trie", "class_masses", "walk"]

#: The most trie nodes evaluated per decode call (each needs a logits row; the
#: context's output buffer has one per sequence, :data:`~.model.MAX_SEQUENCES`).
LEVEL_OUTPUTS = 128


@dataclass
class LabelTrie:
    """The proper prefixes (nodes) of an answer spec's sequences.

    ``next_ids[v]`` are the tokens whose log-probability is read after node
    ``v``; ``steps[k]`` lists, for sequence ``k``, the ``(node, slot)`` pairs whose
    conditional log-probabilities add up to its own after its first token.
    """

    token: np.ndarray  # last token of each node
    depth: np.ndarray  # its length (1: a first token)
    parent: np.ndarray  # parent node (-1 for first tokens)
    children: list[list[int]]
    slot: np.ndarray  # index of a node's token in its parent's next_ids
    next_ids: list[np.ndarray]
    roots: dict[int, int]  # first token -> node
    steps: list[list[tuple[int, int]]]
    width: dict[int, np.ndarray]  # root -> nodes of its subtree at each depth
    size: dict[int, int]  # root -> nodes in its subtree


def build_trie(seqs: list[tuple[int, ...]]) -> LabelTrie:
    """The :class:`LabelTrie` of the listed token sequences ``seqs``."""
    index: dict[tuple[int, ...], int] = {}
    prefixes = sorted({s[:d] for s in seqs for d in range(1, len(s))}, key=lambda p: (len(p), p))
    for p in prefixes:
        index[p] = len(index)
    n = len(prefixes)
    parent = np.array([index.get(p[:-1], -1) for p in prefixes], dtype=np.int64)
    children: list[list[int]] = [[] for _ in range(n)]
    for v, u in enumerate(parent.tolist()):
        if u >= 0:
            children[u].append(v)
    follow: list[set[int]] = [set() for _ in range(n)]
    for s in seqs:
        for d in range(1, len(s)):
            follow[index[s[:d]]].add(s[d])
    next_ids = [np.array(sorted(f), dtype=np.int64) for f in follow]
    where = [{t: i for i, t in enumerate(ids.tolist())} for ids in next_ids]
    slot = np.array(
        [
            where[u][p[-1]] if u >= 0 else -1
            for p, u in zip(prefixes, parent.tolist(), strict=True)
        ],
        dtype=np.int64,
    )
    steps = [[(index[s[:d]], where[index[s[:d]]][s[d]]) for d in range(1, len(s))] for s in seqs]
    trie = LabelTrie(
        token=np.array([p[-1] for p in prefixes], dtype=np.int64),
        depth=np.array([len(p) for p in prefixes], dtype=np.int64),
        parent=parent,
        children=children,
        slot=slot,
        next_ids=next_ids,
        roots={p[0]: index[p] for p in prefixes if len(p) == 1},
        steps=steps,
        width={},
        size={},
    )
    top = int(trie.depth.max(initial=0))
    for p in prefixes:
        r = index[p[:1]]
        w = trie.width.setdefault(r, np.zeros(top + 1, dtype=np.int64))
        w[len(p)] += 1
        trie.size[r] = trie.size.get(r, 0) + 1
    return trie


#: ``evaluate(nodes)``: the conditional log-probabilities of ``next_ids[v]`` after
#: each node ``v`` of ``nodes`` (whose parents were evaluated before).
Evaluate = Callable[[list[int]], list[np.ndarray]]


def walk(
    trie: LabelTrie,
    roots: list[int],
    root_lp: dict[int, float],
    cut: float,
    evaluate: Evaluate,
    *,
    levels: bool = True,
) -> tuple[dict[int, np.ndarray], float]:
    """Evaluate the nodes under ``roots`` (first tokens that passed the cut) whose
    prefix probability is at least ``cut``.

    ``levels``: a whole level per ``evaluate`` call, together with the single
    paths that hang below its nodes (nodes with one child each), evaluated ahead;
    otherwise one node per call, depth first. A node's conditional
    log-probabilities count only when it and its ancestors passed the cut, so
    what is evaluated ahead never changes the result. Returns those of the
    nodes that count and the summed probability of the nodes that were cut.
    """
    cond: dict[int, np.ndarray] = {}
    node_lp = dict(root_lp)
    kept = set(roots)
    pruned = 0.0

    def take(u: int) -> list[int]:
        nonlocal pruned
        out = []
        for v in trie.children[u]:
            node_lp[v] = node_lp[u] + float(cond[u][trie.slot[v]])
            p = float(np.exp(node_lp[v]))
            if p >= cut:
                kept.add(v)
                out.append(v)
            else:
                pruned += p
        return out

    if levels:
        todo = list(roots)
        while todo:
            batch = with_paths(trie, todo)
            cond.update(zip(batch, evaluate(batch), strict=True))
            queue, nxt = list(todo), []
            for u in queue:  # grows while evaluated-ahead nodes pass
                for v in take(u):
                    (queue if v in cond else nxt).append(v)
            todo = nxt
    else:
        stack = roots[::-1]
        while stack:
            v = stack.pop()
            cond[v] = evaluate([v])[0]
            stack.extend(take(v)[::-1])
    return {v: cond[v] for v in kept}, pruned


def with_paths(trie: LabelTrie, nodes: list[int]) -> list[int]:
    """``nodes`` and, after each, the single path below it (parents first)."""
    out = []
    for v in nodes:
        out.append(v)
        while len(trie.children[v]) == 1:
            v = trie.children[v][0]
            out.append(v)
    return out


def group_roots(trie: LabelTrie, roots: list[int], n_ids: int, cells: int) -> list[list[int]]:
    """Roots in groups whose subtrees fit ``n_ids`` sequences per level and
    ``cells`` cache cells at once; a root that fits in neither is a group of its
    own, marked by a leading ``-1`` (evaluate it depth first)."""
    groups: list[list[int]] = []
    cur: list[int] = []
    width = np.zeros(1, dtype=np.int64)
    size = 0
    for r in roots:
        w, s = trie.width[r], trie.size[r]
        if int(w.max()) > n_ids or s > cells:
            groups.append([-1, r])
            continue
        if len(w) > len(width):
            width = np.pad(width, (0, len(w) - len(width)))
        grown = width.copy()
        grown[: len(w)] += w
        if cur and (int(grown.max()) > n_ids or size + s > cells):
            groups.append(cur)
            cur, grown, size = [], w.copy(), 0
        cur.append(r)
        width, size = grown, size + s
    if cur:
        groups.append(cur)
    return groups


def answer_log_mass(
    llm,
    row: np.ndarray,
    n: int,
    seq: int,
    spec: AnswerSpec,
    lse: float,
    label_prune: float,
    free_cells: int,
) -> tuple[np.ndarray, int, float]:
    """Class log-masses for a prompt of ``n`` tokens in sequence ``seq`` whose
    last-token logits are ``row``, the number of label tokens evaluated and the
    pruned mass (module notes). ``free_cells``: cache cells free for the trie.

    ``row`` is read first: evaluating the trie overwrites llama.cpp's logits.
    """
    first_lp, _ = log_softmax_at(row, spec.first_ids, lse)
    if spec.max_extra == 0:
        return class_log_mass(spec, first_lp), 0, 0.0
    trie = spec.trie
    if trie is None:
        trie = spec.trie = build_trie(spec.seqs)
    cut = label_prune * float(np.exp(first_lp).sum())
    every = list(trie.roots.values())
    lps = log_softmax_at(row, trie.token[every], lse)[0].tolist()
    root_lp = dict(zip(every, lps, strict=True))
    roots = [r for r in every if np.exp(root_lp[r]) >= cut]
    pruned = float(sum(np.exp(root_lp[r]) for r in every if np.exp(root_lp[r]) < cut))
    cond: dict[int, np.ndarray] = {}
    for group in group_roots(trie, roots, len(llm.branch_seqs) - 1, free_cells):
        chain = group[0] == -1
        branches = _Branches(llm, trie, n, seq, chain=chain)
        try:
            got, lost = walk(
                trie,
                group[chain:],
                root_lp,
                cut,
                branches.evaluate,
                levels=not chain,
            )
        finally:
            branches.close()
        cond.update(got)
        pruned += lost
    return class_masses(spec, trie, first_lp, cond), len(cond), pruned


def class_masses(
    spec: AnswerSpec, trie: LabelTrie, first_lp: np.ndarray, cond: dict[int, np.ndarray]
) -> np.ndarray:
    """Class log-masses from the first-token log-probabilities of the listed
    sequences and the conditional ones of the evaluated nodes (``cond``).

    A sequence that runs through a node that was not evaluated counts as 0, except
    for a class all of whose sequences do (module notes, *Classes cut whole*).
    """
    seq_logp = np.array(first_lp, dtype=np.float64)
    stop = np.full(len(seq_logp), -1, dtype=np.int64)
    for k, steps in enumerate(trie.steps):
        for v, i in steps:
            c = cond.get(v)
            if c is None:
                stop[k] = v
                break
            seq_logp[k] += c[i]
    stop_lp = seq_logp.copy()
    seq_logp[stop >= 0] = -np.inf
    mass = np.exp(class_log_mass(spec, seq_logp))
    whole = np.ones(spec.n_classes, dtype=bool)
    whole[spec.owner[stop < 0]] = False  # classes with a sequence that was scored
    if whole.any():
        mass = mass + _shares(spec.owner, stop, stop_lp, whole, spec.n_classes)
    return np.log(np.maximum(mass, np.finfo(float).tiny))


def _shares(owner, stop, stop_lp, whole, n_classes: int) -> np.ndarray:
    """Each cut node's probability, split evenly among the classes of the
    sequences through it, given to the classes that were cut whole."""
    out = np.zeros(n_classes)
    cut = np.flatnonzero(stop >= 0)
    for v in np.unique(stop[cut]).tolist():
        ks = cut[stop[cut] == v]
        owners = np.unique(owner[ks])
        p = float(np.exp(stop_lp[ks[0]]))
        share = p / len(owners)
        out[owners[whole[owners]]] += share
    return out


class _Branches:
    """The llama.cpp sequences of the trie nodes being evaluated after a prompt of
    ``n`` tokens in sequence ``seq``: one per node of the current level, or a
    single one reused depth first (``chain``)."""

    def __init__(self, llm, trie: LabelTrie, n: int, seq: int, *, chain: bool) -> None:
        self.llm, self.trie, self.n, self.seq = llm, trie, n, seq
        self.free = list(llm.branch_seqs[::-1])
        self.id_of: dict[int, int] = {}
        self.chain = chain
        if chain:
            self.one = self._take(seq, n)

    def _take(self, src: int, end: int) -> int:
        b = self.free.pop()
        self.llm.seq_cp(src, b, end)
        return b

    def _assign(self, nodes: list[int]) -> list[int]:
        trie = self.trie
        if self.chain:
            self.llm.seq_rm(self.one, self.n + int(trie.depth[nodes[0]]) - 1)
            return [self.one]
        parents = {int(trie.parent[v]) for v in nodes}
        for u in [u for u in self.id_of if u not in parents]:
            b = self.id_of.pop(u)
            self.llm.seq_rm(b)
            self.free.append(b)
        heirs: set[int] = set()
        new: dict[int, int] = {}
        for v in nodes:
            u = int(trie.parent[v])
            if u < 0:
                new[v] = self._take(self.seq, self.n)
            elif u in new:  # a path evaluated ahead: its parent's sequence goes on
                new[v] = new[u]
            elif u not in heirs:
                heirs.add(u)
                new[v] = self.id_of[u]
            else:
                new[v] = self._take(self.id_of[u], self.n + int(trie.depth[u]))
        # A sequence now ends at the deepest node evaluated into it.
        inner = {int(trie.parent[v]) for v in nodes if int(trie.parent[v]) in new}
        self.id_of = {v: b for v, b in new.items() if v not in inner}
        return [new[v] for v in nodes]

    def evaluate(self, nodes: list[int]) -> list[np.ndarray]:
        """Decode ``nodes`` (one level, or one node in chain mode) and read the
        conditional log-probabilities of their next tokens."""
        llm, trie = self.llm, self.trie
        ids = self._assign(nodes)
        out: list[np.ndarray] = []
        step = min(LEVEL_OUTPUTS, llm.n_batch - 8)
        for c in range(0, len(nodes), step):
            part = nodes[c : c + step]
            llm.decode(
                [
                    (int(trie.token[v]), self.n + int(trie.depth[v]) - 1, b, True)
                    for v, b in zip(part, ids[c : c + step], strict=True)
                ]
            )
            out.extend(
                log_softmax_at(llm.logits(k), trie.next_ids[v])[0] for k, v in enumerate(part)
            )
        return out

    def close(self) -> None:
        """Remove every branch sequence from the cache."""
        alive = [self.one] if self.chain else list(self.id_of.values())
        for b in alive:
            self.llm.seq_rm(b)
