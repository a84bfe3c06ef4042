"""Side-by-side benchmark: hyprov, Ansible, pyinfra and a plain paramiko script doing the
same job on real sshd test hosts (tests/sshhosts.py). Entry point: ``python -m bench``.

bench_plan.py and bench_issuance.py (the pure parts) are separate scripts the runner calls.
"""
