"""The domain: every rule of contact discovery, and nothing of gRPC or of any datastore."""
