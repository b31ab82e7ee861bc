"""Every project error survives a process boundary: it pickles with its message and fields, and
after crossing a Ray task or a Ray actor (how training workers run) it is still recognised as an
application error — failed once, never retried as a crash."""

from __future__ import annotations

import pickle

import pytest
from inheritlab.analysis.results import ResultsError  # noqa: F401  (registers the subclass)
from inheritlab.infra import errors
from inheritlab.infra.errors import InheritlabError, ShardError, WorkerCrash


def _all_subclasses(cls: type) -> list[type]:
    """Our subclasses (Ray derives dual classes like ``RayTaskError(SpecError)`` on the fly)."""
    out = []
    for sub in cls.__subclasses__():
        if sub.__module__.startswith("inheritlab."):
            out += [sub] + _all_subclasses(sub)
    return out


# One instance of every error class; an error class with its own constructor needs its row here
# (the completeness check below fails until it has one).
SAMPLES = {ShardError: lambda: ShardError("/data/train/00003.tar", "0000042.JPG", "image does not decode")}


def _instances() -> list[BaseException]:
    classes = [InheritlabError, *_all_subclasses(InheritlabError), WorkerCrash]
    out = []
    for cls in classes:
        make = SAMPLES.get(cls)
        if make is None:
            assert cls.__init__ is Exception.__init__ or cls.__init__ is BaseException.__init__, (
                f"{cls.__name__} has its own constructor: add it to SAMPLES (and give it a __reduce__)")
            make = lambda cls=cls: cls(f"{cls.__name__}: data.shards.train: what was wrong and where")  # noqa: E731
        out.append(make())
    return out


def test_every_error_pickles_with_its_message_and_fields() -> None:
    seen = set()
    for exc in _instances():
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc) and vars(back) == vars(exc), type(exc)
        seen.add(type(exc).__name__)
    assert {"SpecError", "ShardError", "BadSampleCeilingError", "CheckpointError", "DataAccountingError",
            "ResourceError", "ResultsError", "WorkerCrash"} <= seen


def test_errors_cross_ray_tasks_and_actors_as_themselves(ray_local) -> None:
    import ray
    from inheritlab.flows.study_flow import _retry_unless_application_error
    from inheritlab.infra.raycluster import get

    # Defined here so cloudpickle ships them by value (a test module is not importable on workers).
    def fail(exc: BaseException) -> None:
        raise exc

    @ray.remote(num_cpus=0)
    class Worker:
        def fail(self, exc: BaseException) -> None:
            raise exc

    task = ray.remote(num_cpus=0, max_retries=0)(fail)
    actor = Worker.remote()
    for exc in _instances():
        for ref in (task.remote(exc), actor.fail.remote(exc)):
            if isinstance(exc, InheritlabError):
                with pytest.raises(type(exc)) as got:
                    get(ref)
                assert str(got.value) == str(exc) and vars(got.value) == vars(exc)

                class State:  # what Prefect hands the retry condition
                    def result(self, _exc=got.value):
                        raise _exc

                assert _retry_unless_application_error(None, None, State()) is False, type(exc)
            else:  # a crash stays a crash: retried
                with pytest.raises(ray.exceptions.RayTaskError) as got:
                    get(ref)
                assert isinstance(got.value.cause, WorkerCrash)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    started_here = not ray.is_initialized()  # an earlier test in this process may hold a runtime
    if started_here:
        ray.init(num_cpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    if started_here:
        ray.shutdown()


def test_error_module_lists_no_unpicklable_class() -> None:
    # Guard for the next error class: any subclass defined in infra/errors is covered above.
    defined = {v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, BaseException)}
    assert defined <= {type(e) for e in _instances()}
