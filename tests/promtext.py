"""Read Prometheus text exposition in tests: every sample by name and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str | bytes) -> Samples:
    """Every sample of a Prometheus text exposition, keyed by (sample name, labels)."""
    if isinstance(text, bytes):
        text = text.decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            if key in samples:
                raise ValueError(f"duplicate sample {sample.name}{sample.labels}")
            samples[key] = sample.value
    return samples


def value(text_or_samples: str | bytes | Samples, name: str, **labels: str) -> float:
    """The value of the one sample with exactly this name and these labels.

    Raises ``KeyError`` listing the label sets the name does have, when it has not this one.
    """
    samples = text_or_samples if isinstance(text_or_samples, dict) else parse(text_or_samples)
    key = (name, frozenset(labels.items()))
    if key not in samples:
        have = sorted(str(dict(sorted(ls))) for n, ls in samples if n == name)
        raise KeyError(f"no sample {name}{labels}; {name} has {have or 'no samples'}")
    return samples[key]


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when there are none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)
