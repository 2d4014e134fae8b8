"""Cross-cloud features: multi-keys (envelope keyrings), replicated (BYOK) keys, the declarative sync.

Every key operation here runs inside `KeyService.operation` and is authorized by `KeyService.authorize`: this
package composes the service's choke point, it never bypasses it.
"""
