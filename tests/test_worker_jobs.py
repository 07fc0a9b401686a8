"""Which jobs a worker takes from the queue: this service's two, with their arguments, nothing more."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.worker import job_refusal

FIELDS = {name.encode(): b"" for name in ("created_at", "data", "description", "origin", "status", "timeout",
                                          "success_callback_name", "failure_callback_name", "stopped_callback_name")}
RUN = ("run_pricing-v1_42_1764180000123", "0123456789abcdef" * 2, "hash", "pricing", "1")


def job(func_name="app.worker.execute_run", args=RUN, kwargs=None, instance=None):
    return SimpleNamespace(func_name=func_name, args=args, kwargs=kwargs or {}, instance=instance)


class Unreadable:
    @property
    def func_name(self):
        raise ValueError("not JSON")


def test_the_services_own_jobs_are_taken():
    assert job_refusal(FIELDS, job()) is None
    verification = job("app.worker.reproduce_run", ["pricing-v1", -7, "hash", "run_pricing-v1_-7_1"])
    assert job_refusal(FIELDS, verification) is None


@pytest.mark.parametrize(
    ("fields", "candidate", "reason"),
    [(FIELDS, job("os.system", ["id"]), "it calls 'os.system'"),
     (FIELDS, job("builtins.eval"), "it calls 'builtins.eval'"),
     (FIELDS, Unreadable(), "its data is not a JSON job"),
     ({**FIELDS, b"webhooks": b"[]"}, job(), "fields webhooks"),
     ({**FIELDS, b"dependency_ids": b"[]"}, job(), "fields dependency_ids"),
     ({**FIELDS, b"success_callback_name": b"os.system"}, job(), "it names callbacks"),
     (FIELDS, job(args=RUN[:4]), "its arguments"),
     (FIELDS, job(args=("run_a_1_1; id", *RUN[1:])), "its arguments"),
     (FIELDS, job(args=(RUN[0], "not-hex", *RUN[2:])), "its arguments"),
     (FIELDS, job(kwargs={"x": 1}), "its arguments"),
     (FIELDS, job(instance="x"), "its arguments"),
     (FIELDS, job("app.worker.reproduce_run", ["pricing-v1", "7", "hash", "run_pricing-v1_7_1"]), "its arguments"),
     (FIELDS, job("app.worker.reproduce_run", ["pricing-v1", 2**60, "hash", "run_pricing-v1_1_1"]), "its arguments"),
     (FIELDS, job("app.worker.reproduce_run", ["../etc", 1, "hash", "run_x_1_1"]), "its arguments")],
    ids=["os-system", "eval", "unreadable", "webhooks", "dependencies", "callback", "too-few", "bad-run-id",
         "bad-owner", "kwargs", "method", "string-seed", "huge-seed", "bad-scenario"],
)
def test_anything_else_is_refused_with_its_reason(fields, candidate, reason):
    refusal = job_refusal(fields, candidate)
    assert refusal is not None and reason in refusal
