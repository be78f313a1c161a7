"""GitHub integration: pull-request and branch previews driven by webhooks (one edited PR comment,
a GitHub Deployment per head commit, a stable review link), and preview repositories pushed
from a project's files."""
