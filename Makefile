# vgpud: build, generated files and installation.
#
#   make                                   release binaries, then man pages and completions
#   make install DESTDIR=/tmp/pkg PREFIX=/usr
#   make uninstall DESTDIR=/tmp/pkg PREFIX=/usr
#
# `install` never runs cargo: it installs what `make` built (BINDIR_SRC, default
# target/release), so `sudo make install` after `make` builds nothing as root. Tests pass
# BINDIR_SRC=target/debug to install the debug binaries they already have.
#
# Layout (PREFIX=/usr):
#   /usr/bin/vgpuctl, /usr/bin/vgpud-sim   (vgpud-sim is a tool for users and CI, not a service)
#   /usr/sbin/vgpud                        (the system service)
#   /usr/share/dbus-1/system.d/org.vgpud.conf, /usr/share/dbus-1/system-services/org.vgpud.service
#   /usr/lib/systemd/system/vgpud.service, /usr/lib/udev/rules.d/90-vgpud.rules
#   /usr/share/polkit-1/actions/org.vgpud.policy
#   /etc/vgpud/policy.d/00-default.toml    (only when absent; uninstall keeps an edited one)
#   /usr/share/doc/vgpud/examples/*.toml
#   /etc/libvirt/hooks/qemu.d/vgpud -> /usr/bin/vgpuctl
#                                          (vgpuctl run from a qemu.d directory is the hook)
#   /usr/share/man/man1/vgpuctl.1, vgpuctl-<command>.1
#   /usr/share/bash-completion/completions/vgpuctl, /usr/share/zsh/vendor-completions/_vgpuctl,
#   /usr/share/fish/vendor_completions.d/vgpuctl.fish
# Every directory is a variable below; the D-Bus service and the systemd unit get vgpud's
# installed path (SBINDIR) substituted.
#
# The libvirt hook is read only when libvirtd starts: restart it after installing.

PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
DOCDIR ?= $(DATADIR)/doc/vgpud
SYSCONFDIR ?= /etc
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
UDEVRULESDIR ?= $(PREFIX)/lib/udev/rules.d
DBUSSYSTEMDIR ?= $(DATADIR)/dbus-1/system.d
DBUSSERVICEDIR ?= $(DATADIR)/dbus-1/system-services
POLKITACTIONDIR ?= $(DATADIR)/polkit-1/actions
LIBVIRTHOOKDIR ?= $(SYSCONFDIR)/libvirt/hooks/qemu.d
BASHCOMPDIR ?= $(DATADIR)/bash-completion/completions
ZSHCOMPDIR ?= $(DATADIR)/zsh/vendor-completions
FISHCOMPDIR ?= $(DATADIR)/fish/vendor_completions.d

CARGO ?= cargo
BINDIR_SRC ?= target/release
GENDIR ?= target/generated

BINARIES = vgpuctl vgpud vgpud-sim
STAMP = $(GENDIR)/.stamp

.PHONY: all build generate install uninstall test clean

all:
	$(CARGO) build --release --bins
	$(MAKE) generate BINDIR_SRC=target/release

build:
	$(CARGO) build --release --bins

generate: $(STAMP)

# Man pages and completions come from vgpuctl's own command-line definition.
$(STAMP): $(BINDIR_SRC)/vgpuctl
	rm -rf $(GENDIR)/man $(GENDIR)/completions
	mkdir -p $(GENDIR)/man $(GENDIR)/completions
	$(BINDIR_SRC)/vgpuctl man --dir $(GENDIR)/man
	$(BINDIR_SRC)/vgpuctl completions bash > $(GENDIR)/completions/vgpuctl.bash
	$(BINDIR_SRC)/vgpuctl completions zsh > $(GENDIR)/completions/_vgpuctl
	$(BINDIR_SRC)/vgpuctl completions fish > $(GENDIR)/completions/vgpuctl.fish
	touch $@

$(addprefix $(BINDIR_SRC)/,$(BINARIES)):
	@echo "$@ is missing: run 'make' first (or pass BINDIR_SRC=target/debug)" >&2; exit 1

install: $(STAMP) $(addprefix $(BINDIR_SRC)/,$(BINARIES))
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR)
	install -m 0755 $(BINDIR_SRC)/vgpuctl $(DESTDIR)$(BINDIR)/vgpuctl
	install -m 0755 $(BINDIR_SRC)/vgpud-sim $(DESTDIR)$(BINDIR)/vgpud-sim
	install -m 0755 $(BINDIR_SRC)/vgpud $(DESTDIR)$(SBINDIR)/vgpud
	install -d $(DESTDIR)$(DBUSSYSTEMDIR) $(DESTDIR)$(DBUSSERVICEDIR) $(DESTDIR)$(SYSTEMDUNITDIR)
	install -m 0644 dbus/org.vgpud.conf $(DESTDIR)$(DBUSSYSTEMDIR)/org.vgpud.conf
	sed 's|/usr/sbin/vgpud|$(SBINDIR)/vgpud|g' dbus/org.vgpud.service > $(DESTDIR)$(DBUSSERVICEDIR)/org.vgpud.service
	chmod 0644 $(DESTDIR)$(DBUSSERVICEDIR)/org.vgpud.service
	sed 's|/usr/sbin/vgpud|$(SBINDIR)/vgpud|g' dbus/vgpud.service > $(DESTDIR)$(SYSTEMDUNITDIR)/vgpud.service
	chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/vgpud.service
	install -d $(DESTDIR)$(UDEVRULESDIR) $(DESTDIR)$(POLKITACTIONDIR)
	install -m 0644 udev-rules/90-vgpud.rules $(DESTDIR)$(UDEVRULESDIR)/90-vgpud.rules
	install -m 0644 policies/org.vgpud.policy $(DESTDIR)$(POLKITACTIONDIR)/org.vgpud.policy
	install -d $(DESTDIR)$(SYSCONFDIR)/vgpud/policy.d
	test -e $(DESTDIR)$(SYSCONFDIR)/vgpud/policy.d/00-default.toml || \
		install -m 0644 policies/default.toml $(DESTDIR)$(SYSCONFDIR)/vgpud/policy.d/00-default.toml
	install -d $(DESTDIR)$(DOCDIR)/examples
	install -m 0644 policies/examples/*.toml $(DESTDIR)$(DOCDIR)/examples/
	install -d $(DESTDIR)$(LIBVIRTHOOKDIR)
	ln -sfn $(BINDIR)/vgpuctl $(DESTDIR)$(LIBVIRTHOOKDIR)/vgpud
	install -d $(DESTDIR)$(MANDIR)/man1
	install -m 0644 $(GENDIR)/man/*.1 $(DESTDIR)$(MANDIR)/man1/
	install -d $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR)
	install -m 0644 $(GENDIR)/completions/vgpuctl.bash $(DESTDIR)$(BASHCOMPDIR)/vgpuctl
	install -m 0644 $(GENDIR)/completions/_vgpuctl $(DESTDIR)$(ZSHCOMPDIR)/_vgpuctl
	install -m 0644 $(GENDIR)/completions/vgpuctl.fish $(DESTDIR)$(FISHCOMPDIR)/vgpuctl.fish

# Removes every file `install` put there, and the directories that are vgpud's own once
# empty. The default policy goes only if it is the shipped one.
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/vgpuctl $(DESTDIR)$(BINDIR)/vgpud-sim $(DESTDIR)$(SBINDIR)/vgpud
	rm -f $(DESTDIR)$(DBUSSYSTEMDIR)/org.vgpud.conf $(DESTDIR)$(DBUSSERVICEDIR)/org.vgpud.service
	rm -f $(DESTDIR)$(SYSTEMDUNITDIR)/vgpud.service $(DESTDIR)$(UDEVRULESDIR)/90-vgpud.rules
	rm -f $(DESTDIR)$(POLKITACTIONDIR)/org.vgpud.policy
	if cmp -s policies/default.toml $(DESTDIR)$(SYSCONFDIR)/vgpud/policy.d/00-default.toml; then \
		rm -f $(DESTDIR)$(SYSCONFDIR)/vgpud/policy.d/00-default.toml; \
	elif test -e $(DESTDIR)$(SYSCONFDIR)/vgpud/policy.d/00-default.toml; then \
		echo "keeping $(DESTDIR)$(SYSCONFDIR)/vgpud/policy.d/00-default.toml: it was changed" >&2; \
	fi
	rmdir $(DESTDIR)$(SYSCONFDIR)/vgpud/policy.d $(DESTDIR)$(SYSCONFDIR)/vgpud 2>/dev/null || true
	rm -rf $(DESTDIR)$(DOCDIR)
	if test -L $(DESTDIR)$(LIBVIRTHOOKDIR)/vgpud; then rm -f $(DESTDIR)$(LIBVIRTHOOKDIR)/vgpud; fi
	rmdir $(DESTDIR)$(LIBVIRTHOOKDIR) $(DESTDIR)$(SYSCONFDIR)/libvirt/hooks $(DESTDIR)$(SYSCONFDIR)/libvirt 2>/dev/null || true
	rm -f $(DESTDIR)$(MANDIR)/man1/vgpuctl.1 $(DESTDIR)$(MANDIR)/man1/vgpuctl-*.1
	rm -f $(DESTDIR)$(BASHCOMPDIR)/vgpuctl $(DESTDIR)$(ZSHCOMPDIR)/_vgpuctl $(DESTDIR)$(FISHCOMPDIR)/vgpuctl.fish

test:
	$(CARGO) test --all-targets

clean:
	rm -rf $(GENDIR)
