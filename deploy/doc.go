// Package deploy checks the deployment files: the Compose files at the repository root
// (docker-compose.yml, docker-compose.storage.yml, docker-compose.allinone.yml) and the
// Dockerfiles under deploy/docker.
//
// The checks live in this package's tests. They load the Compose files with compose-spec's
// loader, the one Docker Compose itself uses, and parse and lint the Dockerfiles with
// BuildKit's Dockerfile frontend, then hold them to the design: ports, scaling, which services
// may hold database credentials, what each image contains. No Docker engine is needed: the
// tests never start a container, pull an image or contact a registry.
//
// The package ships no code; nothing may import it.
package deploy
