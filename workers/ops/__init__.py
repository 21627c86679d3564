"""Op modules. Each registers its ops on import; keep imports here cheap (no models)."""
