"""What stands between a caller and an engine execution, for every service that starts one."""

from __future__ import annotations

from app.engine.base import Engine
from app.engine.base import EngineUnavailable
from app.engine.base import Identity
from app.engine.base import UnknownScenario
from app.engine.identity import CodeHash
from app.errors import BadInput
from app.errors import Unavailable
from app.runs.limits import NewRunLimit
from app.runs.outage import registry_errors


class RunGate:
    """Whether an execution may start: the engine has the scenario and can take a run now, and
    the caller has room in its new-run limit; and the engineCodeHash that runs are keyed by."""

    def __init__(self, engine: Engine, code_hash: CodeHash, new_runs: NewRunLimit) -> None:
        self._engine = engine
        self._code_hash = code_hash
        self._new_runs = new_runs

    @property
    def names_scenarios(self) -> bool:
        """Whether the engine has a known list of scenarios (an LLM engine's file): an unknown
        scenarioId is then refused before anything is looked up or counted."""
        return self._engine.names_scenarios

    def check_scenario(self, scenario_id: str) -> None:
        """:raises BadInput: the engine has no such scenario (an LLM engine's file does not name it)."""
        try:
            self._engine.check_scenario(scenario_id)
        except UnknownScenario as err:
            raise BadInput(str(err)) from None

    def ready_engine(self, scenario_id: str) -> Identity:
        """The engine's identity, when it has the scenario and can take a run now.

        :raises BadInput: it has no such scenario.
        :raises Unavailable: it cannot take a run (a remote engine that does not answer).
        """
        self.check_scenario(scenario_id)
        try:
            return self._engine.ready()
        except EngineUnavailable as err:
            raise Unavailable(str(err)) from None

    def admit(self, limit_key: str, cost: int = 1) -> None:
        """Count ``cost`` executions against a caller's limit (``Caller.limit_key``), before anything starts.

        :raises RateLimited: the caller has started its share this minute.
        """
        with registry_errors:
            self._new_runs.admit(limit_key, cost)

    def code_hash_of(self, identity: Identity) -> str:
        return self._code_hash.of(identity)

    @property
    def engine_code_hash(self) -> str:
        """The engineCodeHash of the engine as it is now (a remote engine's may change).

        :raises Unavailable: a remote engine that has never been reached (its code is unknown).
        """
        try:
            return self._code_hash.of(self._engine.identity())
        except EngineUnavailable as err:
            raise Unavailable(str(err)) from None
