"""What the gateway and the workers share: settings, Redis, store, registry, records."""
