"""The suite's fixtures live in tests/support/, loaded here as pytest plugins."""

pytest_plugins = [
    "tests.support.server",
    "tests.support.redis_fixtures",
    "tests.support.serve_process",
    "tests.support.stores",
    "tests.support.error_cases",
    # As an application would load the SDK testing kit (tests/outside/ uses it).
    "discovery.testing.pytest_plugin",
]
