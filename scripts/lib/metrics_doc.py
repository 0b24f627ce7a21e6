"""The metric names of docs/metrics.md, and the check that an expression uses only those."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = ("_bucket", "_sum", "_count")


# Labels every series has besides its own: the external label users must set.
EXTERNAL = {"cluster"}


def documented_labels():
    """{name: set of labels} from the tables of docs/metrics.md."""
    labels = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        m = re.match(r"\|\s*`(pie_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", line)
        if m:
            labels[m.group(1)] = {w for w in re.findall(r"[a-z_]+", m.group(3).split("(")[0])
                                  if w != "__"} | EXTERNAL
            for w in re.findall(r"\b([a-z_]+)\s*\(", m.group(3)):
                labels[m.group(1)].add(w)
    if not labels:
        raise SystemExit("docs/metrics.md: no metric table found")
    return labels


def documented():
    """{name: type} from the tables of docs/metrics.md."""
    names = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        m = re.match(r"\|\s*`(pie_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|", line)
        if m:
            names[m.group(1)] = m.group(2)
    if not names:
        raise SystemExit("docs/metrics.md: no metric table found")
    return names


def all_label_names():
    return set().union(*documented_labels().values())


def unknown_metrics(expr, docs):
    """Names used in a PromQL/MetricsQL expression that docs/metrics.md does not define."""
    bad = []
    # {__name__=~"re"}: the regex must match at least one documented name.
    for pattern in re.findall(r'__name__\s*=~\s*"([^"]+)"', expr):
        if not any(re.fullmatch(pattern, n) for n in docs):
            bad.append(f"__name__=~{pattern!r}")
    expr = re.sub(r'__name__\s*=~\s*"[^"]+"', "", expr)
    labels = documented_labels()
    # metric{label="v",...}: each label must be one the metric has (or the external `cluster`).
    for name, matchers in re.findall(r"(?<![\w:])(pie_[a-z0-9_]+)\{([^}]*)\}", expr):
        base = _base(name, docs)
        for label in re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers):
            if base in labels and label not in labels[base] and label != "le":
                bad.append(f"{name}{{{label}}}")
    label_names = all_label_names()
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values are not metric names
    for name in re.findall(r"(?<![\w:])pie_[a-z0-9_]+", expr):
        if name in label_names:
            continue
        if _base(name, docs) not in docs:
            bad.append(name)
    return bad


def _base(name, docs):
    """A histogram's series name -> the documented name."""
    if name not in docs:
        for suffix in SUFFIXES:
            if name.endswith(suffix) and docs.get(name[: -len(suffix)]) == "histogram":
                return name[: -len(suffix)]
    return name
