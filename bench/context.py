"""What the scenarios of one run share: sizes for quick or full mode, and built registries.

Registries (in memory) and embedded stores (on disk, in the work directory) are built
once per run and reused by every scenario that needs the same size.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.data import Registry, make_registry, write_store


@dataclass(frozen=True)
class Sizes:
    hot_path_users: tuple[int, ...]
    hot_path_requests: int
    contacts: int
    naive_users: tuple[int, ...]
    matrix_users: int
    psi_server_items: int
    psi_requests: int
    e2e_users: int
    e2e_seconds: float
    e2e_rounds: int
    e2e_warmup: float
    e2e_payloads: int
    scaling_users: tuple[int, ...]
    scaling_contacts: tuple[int, ...]
    scaling_requests: int
    server_memory_users: tuple[int, ...]
    import_users: int
    import_batch: int


FULL = Sizes(
    hot_path_users=(1_000_000, 10_000_000),
    hot_path_requests=2000,
    contacts=1000,
    naive_users=(1_000_000, 10_000_000),
    matrix_users=1_000_000,
    psi_server_items=100_000,
    psi_requests=5,
    e2e_users=10_000_000,
    e2e_seconds=12.0,
    e2e_rounds=3,
    e2e_warmup=1.0,
    e2e_payloads=1024,
    scaling_users=(100_000, 300_000, 1_000_000, 3_000_000, 10_000_000),
    scaling_contacts=(10, 50, 100, 250, 500, 1000, 2000, 5000),
    scaling_requests=1000,
    server_memory_users=(100_000, 1_000_000, 10_000_000),
    import_users=1_000_000,
    import_batch=10_000,
)

QUICK = Sizes(
    hot_path_users=(100_000,),
    hot_path_requests=300,
    contacts=1000,
    naive_users=(100_000,),
    matrix_users=50_000,
    psi_server_items=5_000,
    psi_requests=2,
    e2e_users=100_000,
    e2e_seconds=1.0,
    e2e_rounds=1,
    e2e_warmup=0.3,
    e2e_payloads=64,
    scaling_users=(10_000, 30_000, 100_000),
    scaling_contacts=(10, 100, 1000, 5000),
    scaling_requests=150,
    server_memory_users=(10_000, 100_000),
    import_users=20_000,
    import_batch=10_000,
)


@dataclass
class Context:
    quick: bool
    out: Path
    work: Path
    profile: bool = True
    _registries: dict[int, Registry] = field(default_factory=dict)
    _stores: dict[int, Path] = field(default_factory=dict)

    @property
    def sizes(self) -> Sizes:
        return QUICK if self.quick else FULL

    def log(self, message: str) -> None:
        sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
        sys.stderr.flush()

    def registry(self, users: int) -> Registry:
        if users not in self._registries:
            started = time.perf_counter()
            self._registries[users] = make_registry(users)
            self.log(f"registry of {users:,} users generated in {time.perf_counter() - started:.1f} s")
        return self._registries[users]

    def store(self, users: int) -> Path:
        """A data directory holding the embedded store of ``registry(users)`` and its secret."""
        if users not in self._stores:
            data_dir = self.work / f"store-{users}"
            started = time.perf_counter()
            write_store(data_dir, self.registry(users))
            self.log(f"embedded store of {users:,} users written in {time.perf_counter() - started:.1f} s")
            self._stores[users] = data_dir
        return self._stores[users]
