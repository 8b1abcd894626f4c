"""The one bootstrap: stratified resampling of samples, or of patients when samples carry a patient id.

Every interval agglom reports (per-group metrics, paired comparisons, the levelling-down flag, the validation
choice, the verdicts, Dice, fidelity) comes from a :class:`Resampler`:

- **Strata** keep each group's (and, for classification, each label's) size fixed across replicates, so a rare
  group is never drawn empty.
- **Clusters.** Images of one patient are correlated; resampling images as if they were independent makes the
  intervals too narrow (docs/metrics.md has the coverage measured on simulated data). With ``clusters`` (a patient
  id per sample) a replicate draws *patients* with replacement inside each stratum and takes all their images,
  and the jackknife behind BCa's acceleration leaves out whole patients. A patient belongs to the stratum of its
  first image (lowest index), so a patient whose images carry different labels or groups is still drawn whole.
- **Identity.** When every patient has one image, the clustered draws are the image draws, index for index and
  from the same random numbers: adding patient ids to a one-image-per-subject set changes no figure.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

__all__ = ["Resampler", "strata_by", "replicate", "clusters_of", "add_patient_counts"]


def strata_by(*columns: Any) -> List[np.ndarray]:
    """Index arrays of the samples sharing every column's value (e.g. group and label), in sorted key order."""
    if len(columns) == 1:
        keys = np.asarray(columns[0]).astype(str)
    else:  # group x binary label: the historical key (its sort order fixes the random draws)
        g, y = columns
        keys = np.char.add(np.char.add(np.asarray(g).astype(str), "\x00"), np.asarray(y).astype(int).astype(str))
    return [np.flatnonzero(keys == k) for k in np.unique(keys)]


def clusters_of(patients: Optional[Sequence[Any]], n: int) -> Optional[np.ndarray]:
    """``[n]`` cluster ids from patient ids (None: every sample is its own cluster); checked for length."""
    if patients is None:
        return None
    p = np.asarray(patients, dtype=object).reshape(-1)
    if p.size != n:
        raise ValueError(f"{p.size} patient ids for {n} samples")
    return p


class Resampler:
    """Bootstrap and jackknife index sets over ``strata`` (index arrays), clustered by ``clusters`` if given."""

    def __init__(self, strata: Sequence[np.ndarray], clusters: Optional[Sequence[Any]] = None):
        self.strata = [np.asarray(s, dtype=np.intp) for s in strata]
        n = int(max((int(s.max()) + 1 for s in self.strata if s.size), default=0))
        self.clustered = clusters is not None
        members = _members(self.strata, clusters, n) if clusters is not None else [[s] for s in self.strata]
        # per stratum: the clusters' members laid end to end, where each cluster starts and how long it is
        self._flat, self._start, self._len = [], [], []
        for ms in members:
            if clusters is None:
                ms = list(ms[0].reshape(-1, 1))
            lens = np.asarray([m.size for m in ms], dtype=np.intp)
            self._flat.append(np.concatenate(ms) if ms else np.zeros(0, np.intp))
            self._start.append(np.cumsum(lens) - lens)
            self._len.append(lens)
        self.n_clusters = int(sum(x.size for x in self._len))
        self.n_samples = int(sum(x.size for x in self._flat))

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One replicate: in every stratum, as many clusters as it has, drawn with replacement."""
        parts = []
        for flat, start, lens in zip(self._flat, self._start, self._len):
            pick = rng.integers(0, lens.size, lens.size)
            parts.append(_expand(flat, start[pick], lens[pick]))
        return np.concatenate(parts)

    def replicates(self, n_boot: int, seed: int) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(seed)
        for _ in range(int(n_boot)):
            yield self.draw(rng)

    def jackknife(self, n_blocks: int, seed: int) -> List[np.ndarray]:
        """Index sets, one per deleted block: every stratum's clusters are shuffled and dealt into ``n_blocks``
        blocks, and set ``j`` keeps everything but block ``j`` (each set keeps every stratum; a stratum of one
        cluster is never emptied)."""
        rng = np.random.default_rng(seed)
        dealt = []
        for flat, start, lens in zip(self._flat, self._start, self._len):
            perm = rng.permutation(lens.size)
            dealt.append((flat, start[perm], lens[perm], np.arange(lens.size) % n_blocks))
        out = []
        for j in range(n_blocks):
            keep = [_expand(f, s[(b != j) | (b.size <= 1)], ln[(b != j) | (b.size <= 1)]) for f, s, ln, b in dealt]
            out.append(np.concatenate(keep))
        return out

    def describe(self, strata: str) -> str:
        over = f" over patients ({self.n_clusters} patients, {self.n_samples} images)" if self.clustered else ""
        return f"stratified ({strata}) bootstrap{over}"


def replicate(stat: Callable[[np.ndarray], Any], resampler: Resampler, n_boot: int, seed: int,
              n_jackknife: int = 20) -> Dict[str, Optional[np.ndarray]]:
    """``{"reps": [n_boot, ...], "jack": [n_jackknife, ...] | None}``: ``stat`` of each bootstrap replicate (random
    numbers from ``seed``) and of each jackknife set (from ``seed + 1``)."""
    reps = np.asarray([stat(i) for i in resampler.replicates(n_boot, seed)])
    jack = np.asarray([stat(i) for i in resampler.jackknife(n_jackknife, seed + 1)]) if n_jackknife else None
    return {"reps": reps, "jack": jack}


def _expand(flat: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """The members of the chosen clusters, in order: ``concat(flat[s:s+l] for s, l in zip(starts, lens))``."""
    if lens.size == 0:
        return flat[:0]
    if np.all(lens == 1):
        return flat[starts]
    offsets = np.repeat(starts - (np.cumsum(lens) - lens), lens)
    return flat[np.arange(int(lens.sum())) + offsets]


def _members(strata: Sequence[np.ndarray], clusters: Sequence[Any], n: int) -> List[List[np.ndarray]]:
    """Per stratum, the member indices of each of its clusters (a cluster sits in the stratum of its first
    sample), clusters ordered by where their first sample stands in the stratum."""
    c = np.asarray(clusters, dtype=object).reshape(-1)
    if c.size < n:
        raise ValueError(f"{c.size} cluster ids for samples indexed up to {n - 1}")
    covered = np.sort(np.concatenate(list(strata))) if strata else np.zeros(0, np.intp)
    first: Dict[Any, int] = {}
    all_of: Dict[Any, List[int]] = {}
    for i in covered.tolist():
        first.setdefault(c[i], i)
        all_of.setdefault(c[i], []).append(i)
    out = []
    for st in strata:
        out.append([np.asarray(all_of[c[i]], dtype=np.intp) for i in st.tolist() if first[c[i]] == i])
    return out


def add_patient_counts(result: Dict[str, Any], groups: np.ndarray, patients: np.ndarray,
                       per_group: str = "groups") -> Dict[str, Any]:
    """Beside each group's image count ``n``, its patients ``n_patients`` (and the total), in place: the reader of a
    clustered interval needs both to judge it."""
    g = np.asarray(groups).astype(str)
    p = np.asarray(patients, dtype=object)
    result["n_patients"] = int(len(set(p.tolist())))
    for name, entry in (result.get(per_group) or {}).items():
        if isinstance(entry, dict):
            entry["n_patients"] = int(len(set(p[g == name].tolist())))
    return result
