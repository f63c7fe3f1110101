"""The chain side: contract bindings, enclave registration, event watcher and submitter."""
