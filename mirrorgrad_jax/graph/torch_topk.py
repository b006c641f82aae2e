"""``torch.topk`` as torch's CPU kernel answers it, ties included, for graphs the reference built with it.

torch's CPU kernel fills a vector of ``(value, index)`` pairs in index order and selects with
libstdc++: ``std::partial_sort`` when ``64 k <= n``, else ``std::nth_element`` followed (for
``sorted=True``, the default) by ``std::sort`` of the first ``k - 1`` pairs; every comparison
is "x.value > y.value" (the index never breaks a tie). Which of several equal values is
selected, and in which order equal values come out, depends only on those algorithms' steps,
so the functions below follow libstdc++'s ``__heap_select``, ``__sort_heap``,
``__introselect`` and ``__introsort_loop`` / ``__final_insertion_sort`` step by step on a
Python list of such pairs.

Preprocessing scripts of the reference models run ``torch.topk`` on the CPU over small
integer counts, where ties are common: DA-MRS's behaviour graph (which neighbours) and
MMRec's DualGNN / DRAGON user graph (in which order; the models read the first 40). Host-side
and pure Python: meant for building a graph once, not for a training step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["torch_cpu_topk", "torch_cpu_topk_order", "torch_cpu_topk_sparse", "torch_cpu_topk_order_sparse"]


def _greater(x: tuple[float, int], y: tuple[float, int]) -> bool:
    return x[0] > y[0]


def _adjust_heap(a: list, first: int, hole: int, length: int, value: tuple[float, int]) -> None:
    """libstdc++ ``__adjust_heap`` on ``a[first:first + length]``, then ``__push_heap``."""
    top = hole
    child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if _greater(a[first + child], a[first + child - 1]):
            child -= 1
        a[first + hole] = a[first + child]
        hole = child
    if length % 2 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        a[first + hole] = a[first + child - 1]
        hole = child - 1
    parent = (hole - 1) // 2
    while hole > top and _greater(a[first + parent], value):
        a[first + hole] = a[first + parent]
        hole = parent
        parent = (hole - 1) // 2
    a[first + hole] = value


def _heap_select(a: list, first: int, middle: int, last: int) -> None:
    """libstdc++ ``__heap_select``: the "largest" ``middle - first`` pairs end in ``a[first:middle]``."""
    length = middle - first
    if length >= 2:
        parent = (length - 2) // 2
        while True:
            _adjust_heap(a, first, parent, length, a[first + parent])
            if parent == 0:
                break
            parent -= 1
    for i in range(middle, last):
        if _greater(a[i], a[first]):
            value = a[i]
            a[i] = a[first]
            _adjust_heap(a, first, 0, length, value)


def _partition_pivot(a: list, first: int, last: int) -> int:
    """libstdc++ ``__unguarded_partition_pivot``: median of (first + 1, mid, last - 1) moved to first, then partition."""
    mid = first + (last - first) // 2
    x, y, z = first + 1, mid, last - 1
    if _greater(a[x], a[y]):
        pick = y if _greater(a[y], a[z]) else z if _greater(a[x], a[z]) else x
    else:
        pick = x if _greater(a[x], a[z]) else z if _greater(a[y], a[z]) else y
    a[first], a[pick] = a[pick], a[first]
    lo, hi = first + 1, last
    while True:
        while _greater(a[lo], a[first]):
            lo += 1
        hi -= 1
        while _greater(a[first], a[hi]):
            hi -= 1
        if not lo < hi:
            return lo
        a[lo], a[hi] = a[hi], a[lo]
        lo += 1


def _nth_element(a: list, nth: int) -> None:
    """libstdc++ ``std::nth_element`` (``__introselect``) on the whole list."""
    first, last = 0, len(a)
    if first == last or nth == last:
        return
    depth = 2 * ((last - first).bit_length() - 1)
    while last - first > 3:
        if depth == 0:
            _heap_select(a, first, nth + 1, last)
            a[first], a[nth] = a[nth], a[first]
            return
        depth -= 1
        cut = _partition_pivot(a, first, last)
        if cut <= nth:
            first = cut
        else:
            last = cut
    _insertion_sort(a, first, last)


def _selected(values: Sequence[float], k: int) -> tuple[list, int, bool]:
    """torch's selection step: ``(pairs, k, heap)`` with the selected pairs in ``pairs[:k]``; ``heap`` names the path taken."""
    pairs, k = [(float(v), j) for j, v in enumerate(values)], int(k)
    if not 0 <= k <= len(pairs):
        raise ValueError(f"k must be in 0..{len(pairs)}, got {k}")
    heap = 64 * k <= len(pairs)
    if k and heap:
        _heap_select(pairs, 0, k, len(pairs))
    elif k:
        _nth_element(pairs, k - 1)
    return pairs, k, heap


def torch_cpu_topk(values: Sequence[float], k: int) -> list[int]:
    """The indices ``torch.topk(torch.tensor(values), k)`` returns on the CPU, as a set in list form.

    A transcription of torch's CPU kernel over libstdc++: ``(value, index)`` pairs in index
    order, then ``std::partial_sort`` when ``64 k <= n`` and ``std::nth_element`` otherwise,
    comparing values only. The result differs from "lowest index first" exactly when
    values tie at the ``k``-th place. Values must not be NaN.

    Args:
      values: a 1-D sequence of ``n`` numbers.
      k: ``0 <= k <= n``.

    Returns:
      The ``k`` selected indices, sorted ascending (a set; :func:`torch_cpu_topk_order`
      gives them in the order torch returns them).

    Examples:
      >>> torch_cpu_topk([2.0, 2.0, 3.0, 2.0, 2.0], 2)  # torch keeps index 4 among the tied 2's
      [2, 4]
    """
    pairs, k, _ = _selected(values, k)
    return sorted(j for _, j in pairs[:k])


def _sparse_head(cols: np.ndarray, vals: np.ndarray, k: int) -> list:
    """The pairs the heap selection of a mostly-zero row sees: its first ``k`` positions, then its non-zeros after them."""
    head = dict.fromkeys(range(k), 0.0)
    for c, v in zip(cols.tolist(), vals.tolist()):
        if c < k:
            head[c] = float(v)
    return [(v, j) for j, v in head.items()] + [(float(v), c) for c, v in zip(cols.tolist(), vals.tolist()) if c >= k]


def _sparse_selected(cols: np.ndarray, vals: np.ndarray, n: int, k: int) -> tuple[list, int, bool]:
    """:func:`_selected` of a row of length ``n`` that is 0 except ``vals > 0`` at ``cols`` (ascending).

    On the heap-selection path only the first ``k`` positions and the non-zero entries
    after them matter: a later 0 never beats the heap's smallest element (all values are
    >= 0), so the zeros are skipped without changing a step. The introselect path
    (``n < 64 k``, small rows) and ``k = 0`` run on the dense row.
    """
    n, k = int(n), int(k)
    if k == 0 or 64 * k > n:
        row = np.zeros(n)
        row[cols] = vals
        return _selected(row, k)
    pairs = _sparse_head(cols, vals, k)
    _heap_select(pairs, 0, k, len(pairs))
    return pairs, k, True


def torch_cpu_topk_sparse(cols: np.ndarray, vals: np.ndarray, n: int, k: int) -> list[int]:
    """:func:`torch_cpu_topk` of a row of length ``n`` that is 0 except ``vals > 0`` at ``cols`` (ascending).

    The same answer without building the row where torch's heap path allows it
    (:func:`_sparse_selected`).
    """
    pairs, k, _ = _sparse_selected(cols, vals, n, k)
    return sorted(j for _, j in pairs[:k])


def _sort_heap(a: list, first: int, last: int) -> None:
    """libstdc++ ``__sort_heap`` (repeated ``__pop_heap``): the heap ``a[first:last]`` in comparator order."""
    while last - first > 1:
        last -= 1
        value = a[last]
        a[last] = a[first]
        _adjust_heap(a, first, 0, last - first, value)


def _linear_insert(a: list, last: int) -> None:
    """libstdc++ ``__unguarded_linear_insert``."""
    value = a[last]
    while _greater(value, a[last - 1]):
        a[last] = a[last - 1]
        last -= 1
    a[last] = value


def _insertion_sort(a: list, first: int, last: int) -> None:
    """libstdc++ ``__insertion_sort``."""
    for i in range(first + 1, last):
        if _greater(a[i], a[first]):
            value = a[i]
            a[first + 1 : i + 1] = a[first:i]
            a[first] = value
        else:
            _linear_insert(a, i)


def _introsort_loop(a: list, first: int, last: int, depth: int) -> None:
    """libstdc++ ``__introsort_loop`` (threshold 16): recurse on the right part, loop on the left."""
    while last - first > 16:
        if depth == 0:  # __partial_sort(first, last, last)
            _heap_select(a, first, last, last)
            _sort_heap(a, first, last)
            return
        depth -= 1
        cut = _partition_pivot(a, first, last)
        _introsort_loop(a, cut, last, depth)
        last = cut


def _sort(a: list, first: int, last: int) -> None:
    """libstdc++ ``std::sort``: ``__introsort_loop`` with depth ``2 log2 n``, then ``__final_insertion_sort``."""
    if last - first < 2:
        return
    _introsort_loop(a, first, last, 2 * ((last - first).bit_length() - 1))
    if last - first > 16:
        _insertion_sort(a, first, first + 16)
        for i in range(first + 16, last):
            _linear_insert(a, i)
    else:
        _insertion_sort(a, first, last)


def _in_torch_order(pairs: list, k: int, heap: bool) -> list[int]:
    """The indices of a selection (:func:`_selected`), sorted as torch sorts them for ``sorted=True``."""
    if k and heap:
        _sort_heap(pairs, 0, k)
    elif k:
        _sort(pairs, 0, k - 1)
    return [j for _, j in pairs[:k]]


def torch_cpu_topk_order(values: Sequence[float], k: int) -> list[int]:
    """The indices ``torch.topk(torch.tensor(values), k)`` returns on the CPU, in its order.

    As :func:`torch_cpu_topk`, then sorted as torch sorts them (``sorted=True``): the heap
    of ``std::partial_sort`` popped in order, or ``std::sort`` of the first ``k - 1`` pairs
    after ``std::nth_element``. Values come out in decreasing order; the order of equal
    values is torch's. Values must not be NaN.

    Args:
      values: a 1-D sequence of ``n`` numbers.
      k: ``0 <= k <= n``.

    Returns:
      The ``k`` indices, in the order torch returns them.

    Examples:
      >>> torch_cpu_topk_order([1.0, 1.0, 1.0, 2.0], 4)  # torch puts the tied 1's as 2, 0, 1
      [3, 2, 0, 1]
    """
    return _in_torch_order(*_selected(values, k))


def torch_cpu_topk_order_sparse(cols: np.ndarray, vals: np.ndarray, n: int, k: int) -> list[int]:
    """:func:`torch_cpu_topk_order` of a row of length ``n`` that is 0 except ``vals > 0`` at ``cols`` (ascending).

    The same answer without building the row where torch's heap path allows it
    (:func:`_sparse_selected`).
    """
    return _in_torch_order(*_sparse_selected(cols, vals, n, k))
