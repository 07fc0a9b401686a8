"""Which jobs a worker takes from the queue: this service's two, with their arguments, nothing more."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from app import worker
from app.runs.jobs import job_refusal
from app.runs.jobs import own_jobs_worker

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


def read_by_the_worker(func_name, args=RUN, **fields):
    """A job made, as the worker makes it, from a hash naming ``func_name`` and ``fields``."""
    import redis
    from rq.serializers import JSONSerializer

    job = own_jobs_worker().job_class("planted", connection=redis.Redis(), serializer=JSONSerializer)
    job.restore({b"data": json.dumps([func_name, None, list(args), {}]).encode(),
                 **{name.encode(): value.encode() for name, value in fields.items()}})
    return job


def test_a_job_the_worker_reads_never_imports_a_callback_nor_sends_a_webhook(monkeypatch):
    from rq.webhook import Webhook

    sent = []
    monkeypatch.setattr(Webhook, "send", lambda webhook, job, exc_string=None: sent.append(webhook.url))
    webhooks = json.dumps([{"url": "http://127.0.0.1:9/", "job_status": "failed"}])
    job = read_by_the_worker("app.worker.execute_run", success_callback_name="os.system",
                             failure_callback_name="builtins.print", stopped_callback_name="os.system",
                             webhooks=webhooks)
    assert (job.success_callback, job.failure_callback, job.stopped_callback) == (None, None, None)
    job.send_webhooks("failed")
    assert sent == []


def test_a_job_the_worker_reads_calls_only_the_services_own_functions():
    assert read_by_the_worker("app.worker.execute_run").func is worker.execute_run
    foreign = read_by_the_worker("os.system", ["id"])
    with pytest.raises(ValueError, match=r"^'os\.system' is not one of this service's jobs$"):
        _ = foreign.func


def test_the_workers_jobs_have_no_dependents_to_enqueue():
    import redis

    queue = own_jobs_worker().queue_class("runs", connection=redis.Redis())
    assert queue.move_dependents_to_ready(read_by_the_worker("app.worker.execute_run")) == {}
