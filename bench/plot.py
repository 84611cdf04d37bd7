"""The plot of docs/performance.md: expansion throughput and peak RSS against recipients."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: a PNG only
import matplotlib.pyplot as plt  # after the backend is chosen


def plot_sizes(sizes: list[int], emails_per_second: list[float], peak_rss_mib: list[float], path: Path) -> None:
    figure, rate_axis = plt.subplots(figsize=(7, 4), dpi=110)
    rate_axis.plot(sizes, emails_per_second, "o-", color="tab:blue", label="emails queued per second")
    rate_axis.set_xscale("log")
    rate_axis.set_xlabel("recipients of one request")
    rate_axis.set_ylabel("emails/s (expansion)", color="tab:blue")
    rate_axis.set_ylim(bottom=0)
    rss_axis = rate_axis.twinx()
    rss_axis.plot(sizes, peak_rss_mib, "s--", color="tab:red", label="peak RSS")
    rss_axis.set_ylabel("peak RSS of the expansion process (MiB)", color="tab:red")
    rss_axis.set_ylim(bottom=0, top=max(peak_rss_mib) * 1.5)
    rate_axis.set_xticks(sizes, [f"{size:,}" for size in sizes])
    rate_axis.set_title("dbmail expansion on the local stack (DynamoDB Local + moto)")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
