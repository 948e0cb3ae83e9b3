# shellcheck shell=bash
# Installing Debian packages for scripts/bootstrap and scripts/install-node (sourced by both).
#
# Only what is missing is installed, quietly (apt's and dpkg's output goes to a log that is shown
# only when something fails), and nothing already on the machine is upgraded: when the newest version
# of a package would upgrade an installed one (udev pulling a newer systemd), an older version the
# mirror still offers that upgrades nothing is taken instead (the udev matching the installed
# systemd); when there is none, the package is left out and named.
# A package manager that holds the dpkg lock (unattended-upgrades after boot) is waited for, up to
# APT_LOCK_WAIT_S seconds (default 600), polling every APT_LOCK_POLL_S (default 5), and reported as
# such. The caller sets APT_WHO, the name its messages start with.

APT_WHO=${APT_WHO:-apt}

# apt_missing PACKAGE...: print each package that is not installed, one a line.
apt_missing() {
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
  done
}

# apt_run LOG ARGS...: `apt-get ARGS` with its output in LOG; while another process holds the lock,
# wait and try again. Returns apt-get's status, or 75 when the lock was still held at the limit.
apt_run() {
  local log=$1 waited=0 said=0 status lock
  shift
  local limit=${APT_LOCK_WAIT_S:-600} step=${APT_LOCK_POLL_S:-5}
  while true; do
    status=0
    "${APT_SUDO[@]}" apt-get "$@" >"$log" 2>&1 || status=$?
    [ "$status" -ne 0 ] || return 0
    lock=$(grep -m1 -E "Could not get lock|Unable to acquire the dpkg frontend lock|Unable to lock" "$log") \
      || return "$status"
    if [ "$waited" -ge "$limit" ]; then
      echo "$APT_WHO: another package manager still holds the dpkg lock after ${waited} s: ${lock#E: }" >&2
      echo "$APT_WHO: let it finish (e.g. unattended-upgrades after boot: systemctl status unattended-upgrades), then run this again" >&2
      return 75
    fi
    if [ "$said" -eq 0 ]; then
      echo "$APT_WHO: waiting up to ${limit} s for another package manager to finish: ${lock#E: }" >&2
      said=1
    fi
    sleep "$step"
    waited=$((waited + step))
  done
}

# _apt_upgrades LOG: the installed packages a simulated install in LOG would upgrade.
_apt_upgrades() {
  sed -n -E 's/^Inst ([^ ]+) \[.*/\1/p' "$1" | tr '\n' ' ' | sed 's/ $//'
}

# _apt_version_without_upgrades LOG PACKAGE: the newest version of PACKAGE the mirrors offer whose
# installation upgrades nothing on this machine; prints nothing when there is none.
_apt_version_without_upgrades() {
  local log=$1 pkg=$2 version
  while read -r version; do
    apt_run "$log" install -s -qq --no-install-recommends "$pkg=$version" || continue
    if [ -z "$(_apt_upgrades "$log")" ]; then
      echo "$version"
      return 0
    fi
  done < <(apt-cache madison "$pkg" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}' | tail -n +2)
}

# _apt_failed WHAT LOG: say what failed, with apt's last lines.
_apt_failed() {
  echo "$APT_WHO: $1 failed; apt-get said:" >&2
  grep -E '^(E|W):' "$2" | tail -n 5 >&2 || tail -n 5 "$2" >&2
}

# apt_install PACKAGE...: install the missing packages. Returns 0 when all of them are installed
# now, 1 when some could not be (each named, with the reason), 75 when the dpkg lock stayed held.
apt_install() {
  local missing=() install=() pkg status log upgrades version
  mapfile -t missing < <(apt_missing "$@")
  [ ${#missing[@]} -gt 0 ] || return 0
  APT_SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
      echo "$APT_WHO: installing ${missing[*]} needs root: run this as root or install sudo" >&2
      return 1
    fi
    APT_SUDO=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  log=$(mktemp)
  echo "$APT_WHO: installing Debian packages: ${missing[*]}"
  status=0
  apt_run "$log" update -qq || status=$?
  if [ "$status" -ne 0 ]; then
    [ "$status" -eq 75 ] || _apt_failed "apt-get update (the package mirror in /etc/apt/sources.list*)" "$log"
    rm -f "$log"
    return "$status"
  fi
  for pkg in "${missing[@]}"; do
    status=0
    apt_run "$log" install -s -qq --no-install-recommends "$pkg" || status=$?
    if [ "$status" -ne 0 ]; then
      [ "$status" -eq 75 ] && { rm -f "$log"; return 75; }
      _apt_failed "finding $pkg" "$log"
      continue
    fi
    upgrades=$(_apt_upgrades "$log")
    if [ -n "$upgrades" ]; then
      version=$(_apt_version_without_upgrades "$log" "$pkg")
      if [ -z "$version" ]; then
        echo "$APT_WHO: not installing $pkg: it would upgrade $upgrades on this machine (install it yourself if you want that)" >&2
        continue
      fi
      echo "$APT_WHO: taking $pkg $version, the version that matches what this machine has (the newest would upgrade $upgrades)"
      pkg="$pkg=$version"
    fi
    install+=("$pkg")
  done
  status=0
  if [ ${#install[@]} -gt 0 ]; then
    apt_run "$log" install -y -qq --no-install-recommends --no-upgrade "${install[@]}" || status=$?
    if [ "$status" -eq 0 ]; then
      echo "$APT_WHO: installed ${install[*]}"
    elif [ "$status" -ne 75 ]; then
      _apt_failed "apt-get install ${install[*]}" "$log"
    fi
  fi
  rm -f "$log"
  [ "$status" -ne 0 ] && return "$status"
  [ ${#install[@]} -eq ${#missing[@]} ] || return 1
  return 0
}
