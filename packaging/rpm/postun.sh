# snowtrail %postun ($1: 0 on erase, 1 on upgrade). On erase the agent's CA leaves the system trust
# store. The state and the audit trail under /var/lib/snowtrail stay (rpm has no purge): delete
# them by hand when the audit is no longer needed.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
if [ "$1" -eq 0 ]; then
    rm -f /etc/pki/ca-trust/source/anchors/snowtrail-ca.pem
    update-ca-trust extract || :
fi
