#!/bin/sh
# As the official redis image (which turns protected mode off in its build): a server started
# without a password accepts connections from the other containers. A config file, if any,
# stays the first argument; a later --protected-mode in the arguments wins.
set -e
if [ "${1:-}" = redis-server ]; then
  shift
  case "${1:-}" in
    '' | -*) set -- redis-server --protected-mode no "$@" ;;
    *)
      config="$1"
      shift
      set -- redis-server "$config" --protected-mode no "$@"
      ;;
  esac
fi
exec "$@"
