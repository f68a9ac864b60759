"""The composition root: ``wiring`` builds the service from the config, ``server`` starts and
stops it, ``credentials`` loads its secrets, authenticator and TLS credentials."""
