"""The registry store: distribution spec v1.1 over ``requests``, with auth and docker credentials."""

from ocibuild.store.registry.auth import Challenge, Credential, TokenCache, merge_scopes, parse_www_authenticate
from ocibuild.store.registry.client import RegistryClient, RegistryOptions, parse_retry_after
from ocibuild.store.registry.credentials import login, logout, lookup
from ocibuild.store.registry.store import RegistryStore, fallback_tag, get_registry_store

__all__ = [
    "Challenge", "Credential", "RegistryClient", "RegistryOptions", "RegistryStore", "TokenCache",
    "fallback_tag", "get_registry_store", "login", "logout", "lookup", "merge_scopes",
    "parse_retry_after", "parse_www_authenticate",
]
