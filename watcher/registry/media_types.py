"""Manifest media types, and the Accept list sent with every manifest request.

Constants only: no imports from watcher, no I/O.
"""

from __future__ import annotations

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

#: Indexes first: with a narrower list a registry may convert a multi-platform
#: tag to one platform's manifest, whose digest is not the tag's.
MANIFEST_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)

#: The ``Accept`` header value of every manifest HEAD or GET.
MANIFEST_ACCEPT = ", ".join(MANIFEST_TYPES)

#: Docker's old schema1 manifests: a registry serves them when it ignores
#: ``Accept``, with a digest that no ``docker pull`` shows.
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
