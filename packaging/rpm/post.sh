# snowtrail %post ($1: 1 on install, 2 on upgrade). Creates the state directories and the agent's
# CA (kept on upgrade), puts the CA into the system trust store, and starts the service on install
# or restarts it on upgrade (the pinned programs bridge the restart).
set -e
install -d -m 0700 /var/lib/snowtrail /var/lib/snowtrail/audit
install -d -m 0750 /var/log/snowtrail
snowtrail ca init
mkdir -p /etc/pki/ca-trust/source/anchors
snowtrail ca export > /etc/pki/ca-trust/source/anchors/snowtrail-ca.pem.new
chmod 0644 /etc/pki/ca-trust/source/anchors/snowtrail-ca.pem.new
mv /etc/pki/ca-trust/source/anchors/snowtrail-ca.pem.new /etc/pki/ca-trust/source/anchors/snowtrail-ca.pem
update-ca-trust extract
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    if [ "$1" -eq 1 ]; then
        systemctl enable --now snowtrail.service || :
    else
        systemctl try-restart snowtrail.service || :
    fi
fi
