"""Attestations attached to images: SBOM and provenance referrers, cosign-format signatures.

``keys`` reads signing keys (PEM, cosign.key), ``sign``/``verify`` write and check the signature
cosign writes for key pairs (``sha256-<hex>.sig``), ``referrers`` attaches OCI 1.1 artifacts,
``sbom`` and ``provenance`` make the documents, ``build`` is the one hook the build calls.
"""
