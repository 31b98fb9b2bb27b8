"""The soak harness's pure parts (the soak itself is ``make soak``, not part of ``make test``)."""

from __future__ import annotations

from schemas import events as ev
from schemas import subjects as s
from tests.soak.__main__ import checkable, median_try
from tests.soak.load import ending, spec
from tests.soak.measure import Sample, label, markdown, ratio, sum_rss
from tests.support.events import decided, small_submitted


def _sample(jobs: int, rss: float, store: int, placement_s: float | None) -> Sample:
    return Sample(
        jobs=jobs,
        elapsed_s=jobs / 300,
        rate=300.0,
        rss_mb={"placement": rss, "postgres": 2 * rss},
        js_store_bytes=store,
        stream_bytes={},
        pg_bytes=store,
        restart_s={"placement": placement_s},
    )


def test_processes_are_labelled_by_kind() -> None:
    assert label(["/usr/bin/python3", "-m", "services.placement"]) == "placement"
    assert label(["/opt/nats/nats-server", "-c", "x.conf"]) == "nats-server"
    assert label(["postgres: postgres natsched 127.0.0.1(5432) idle"]) == "postgres"
    assert label(["/usr/lib/postgresql/16/bin/postgres", "-D", "/data"]) == "postgres"
    assert label(["/venv/bin/python", "/venv/bin/moto_server", "-p", "5000"]) == "moto"
    assert label(["/usr/bin/python3", "-m", "tests.soak"]) is None
    assert label([]) is None


def test_rss_is_summed_per_kind_and_unknown_processes_left_out() -> None:
    mb = 2**20
    got = sum_rss([("postgres", 10 * mb), ("postgres", 5 * mb), ("gateway", 40 * mb), (None, 99 * mb)])
    assert got == {"postgres": 15.0, "gateway": 40.0}


def test_ratio_compares_the_last_sample_with_the_first_at_a_job_count() -> None:
    xs = [_sample(0, 10, 0, 1.0), _sample(100_000, 40, 100, 1.0), _sample(300_000, 50, 200, 1.2)]
    xs.append(_sample(1_000_000, 55, 220, 1.8))
    assert ratio(xs, 300_000, "rss_mb", "placement") == 1.1
    assert ratio(xs, 300_000, "js_store_bytes") == 1.1
    assert ratio(xs, 100_000, "restart_s", "placement") == 1.8
    assert ratio(xs, 2_000_000, "pg_bytes") is None  # no sample there yet
    assert ratio(xs[:3], 300_000, "pg_bytes") is None  # the base is the last sample
    assert ratio([_sample(0, 0, 0, None), _sample(1, 1, 1, None)], 0, "restart_s", "placement") is None


def test_table_has_a_row_per_sample_and_the_bars() -> None:
    xs = [_sample(100_000, 40, 2**20, 1.0), _sample(300_000, 50, 2**20, 1.2), _sample(1_000_000, 55, 2**20, None)]
    md = markdown(xs, "preamble")
    rows = [line for line in md.splitlines() if line.startswith("| 1") or line.startswith("| 3")]
    assert len(rows) == 3
    assert "| 1,000,000 |" in md and "—" in rows[-1]  # a restart that never became ready
    assert "placement 1.1x" in md and "bar: <= 1.25" in md


def test_jobs_vary_in_size_and_lifetime_and_some_end_early() -> None:
    specs = [spec(i) for i in range(1000)]
    assert {x["replicas"] for x in specs} == {1, 2, 3}
    runtimes = {x["max_runtime_s"] for x in specs}
    assert min(runtimes) == 5 and max(runtimes) == 60
    ends = [ending(i) for i in range(1000)]
    assert sum(1 for e in ends if e and e[0] == s.JOB_CANCEL) == 100
    assert sum(1 for e in ends if e and e[0] == s.JOB_COMPLETE) == 100


def test_jobs_whose_submit_aged_out_or_still_in_flight_are_left_out_of_the_check() -> None:
    def cancel(job: str) -> ev.Event:
        return ev.JobCancelRequested(event_id=ev.event_id_for(job, s.JOB_CANCEL_REQUESTED), job_id=job)

    events = [decided("old"), cancel("old"), small_submitted("new"), decided("new"), cancel("new")]
    kept = checkable([*events, small_submitted("flying")])
    assert [(type(e).__name__, getattr(e, "job_id", None)) for e in kept] == [
        ("JobSubmitted", "new"),
        ("PlacementDecided", "new"),
        ("JobCancelRequested", "new"),
    ]


def test_the_restart_figure_is_the_median_try_and_a_try_never_ready_counts_as_slowest() -> None:
    assert median_try([3.1, 0.9, 1.2]) == 1.2
    assert median_try([None, 0.9, 1.2]) == 1.2
    assert median_try([None, None, 1.2]) is None
    assert median_try([]) is None
