# snowtrail %preun ($1: 0 on erase, 1 on upgrade). On erase, stop the daemon and detach the kernel
# programs: pinned, they would keep enrolled workloads from Snowflake with no agent left.
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl disable --now snowtrail.service || :
    fi
    snowtrail detach >/dev/null 2>&1 || :
fi
