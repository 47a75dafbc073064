# >>> hashfleet common: the same text in every .deb and .rpm script (packaging/scripts/common.sh)
HF_USER=hashfleet
HF_STATE=/var/lib/hashfleet/@COMPONENT@
HF_CONFIG=/etc/hashfleet/@COMPONENT@.toml

# The system user and group hashfleet, shared by the three packages.
hf_user() {
    if ! getent group "$HF_USER" >/dev/null; then
        groupadd --system "$HF_USER"
    fi
    if ! getent passwd "$HF_USER" >/dev/null; then
        useradd --system --gid "$HF_USER" --home-dir /var/lib/hashfleet \
            --no-create-home --shell /usr/sbin/nologin \
            --comment "Hashfleet services" "$HF_USER"
    fi
}

# The state directory is made once, mode 0700, and from then on left as it
# is until purge: identities, tokens, the outbox and the store survive every
# upgrade untouched. The config (it may hold enrollment tokens) is readable
# by the service's group only.
hf_dirs() {
    install -d -m 0755 -o root -g root /var/lib/hashfleet /etc/hashfleet
    if [ ! -e "$HF_STATE" ]; then
        install -d -m 0700 -o "$HF_USER" -g "$HF_USER" "$HF_STATE"
    fi
    if [ -f "$HF_CONFIG" ]; then
        chown "root:$HF_USER" "$HF_CONFIG"
        chmod 0640 "$HF_CONFIG"
    fi
}
# <<< hashfleet common
