/*
 * hcs-simdrv - the simulated vendor driver's device nodes, for the driver ioctl path.
 *
 *   hcs-simdrv MOUNTPOINT        (HCS_SIM_PROFILE / HCS_SIM_FAULTS as for the simulated libraries)
 *
 * Serves one file per device of the node profile, "<vendor>-<index>" (nvidia-0, ascend-3, ...), in a
 * FUSE file system (libfuse3, low-level API) at MOUNTPOINT, and answers the synchronise ioctl
 * SIM_IOC_SYNC on a device's node after that device's scripted synchronise delay (fault file
 * "sync_us" / "slow", sim_faults.h). With HCS_SIM_DEVICE_NODES=MOUNTPOINT the simulated runtimes'
 * synchronise calls wait in that ioctl instead of in the process (sim_device_sync_delay), so a
 * workload's synchronise goes through a real ioctl system call on a device fd, whose latency is the
 * device's: what the node agent's eBPF syscall tracepoints (sys_enter_ioctl / sys_exit_ioctl) time
 * on a real node's /dev/nvidiaN, /dev/davinciN, ... (hcs/devices/workload.py).
 *
 * Prints "ready <MOUNTPOINT>" once mounted; SIGTERM / SIGINT unmount and exit. Other ioctls get
 * ENOTTY; the files are empty and read-only in content.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 35
#include <errno.h>
#include <fuse_lowlevel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sim_faults.h"
#include "sim_profile.h"

struct node {
    sim_vendor_t vendor;
    int index;
    char name[48];
};

static struct node nodes[SIM_MAX_DEVICES];
static int nnodes;
static const sim_profile_t *prof;

#define ROOT_INO 1
#define FIRST_INO 2
#define ATTR_TIMEOUT 3600.0

static int node_of(fuse_ino_t ino) {
    return ino >= FIRST_INO && ino < (fuse_ino_t)(FIRST_INO + nnodes) ? (int)(ino - FIRST_INO) : -1;
}

static void fill_attr(fuse_ino_t ino, struct stat *st) {
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    if (ino == ROOT_INO) {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
    } else {
        st->st_mode = S_IFREG | 0666;
        st->st_nlink = 1;
    }
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    if (parent == ROOT_INO)
        for (int i = 0; i < nnodes; i++)
            if (strcmp(name, nodes[i].name) == 0) {
                struct fuse_entry_param e;
                memset(&e, 0, sizeof e);
                e.ino = FIRST_INO + (fuse_ino_t)i;
                e.attr_timeout = ATTR_TIMEOUT;
                e.entry_timeout = ATTR_TIMEOUT;
                fill_attr(e.ino, &e.attr);
                fuse_reply_entry(req, &e);
                return;
            }
    fuse_reply_err(req, ENOENT);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)fi;
    if (ino != ROOT_INO && node_of(ino) < 0) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct stat st;
    fill_attr(ino, &st);
    fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)fi;
    if (ino != ROOT_INO) {
        fuse_reply_err(req, ENOTDIR);
        return;
    }
    char buf[8192];
    size_t used = 0;
    for (int i = (int)off; i < nnodes + 2; i++) {
        struct stat st;
        const char *name = i == 0 ? "." : i == 1 ? ".." : nodes[i - 2].name;
        fill_attr(i < 2 ? ROOT_INO : FIRST_INO + (fuse_ino_t)(i - 2), &st);
        size_t need = fuse_add_direntry(req, NULL, 0, name, NULL, 0);
        if (used + need > size || used + need > sizeof buf)
            break;
        fuse_add_direntry(req, buf + used, sizeof buf - used, name, &st, i + 1);
        used += need;
    }
    fuse_reply_buf(req, buf, used);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    if (node_of(ino) < 0) {
        fuse_reply_err(req, ino == ROOT_INO ? EISDIR : ENOENT);
        return;
    }
    fi->direct_io = 1;
    fi->nonseekable = 1;
    fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)ino, (void)size, (void)off, (void)fi;
    fuse_reply_buf(req, NULL, 0);
}

/* The synchronise: answered after the device's scripted delay (a worker thread per waiting call). */
static void op_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg, struct fuse_file_info *fi,
                     unsigned flags, const void *in_buf, size_t in_bufsz, size_t out_bufsz) {
    (void)arg, (void)fi, (void)flags, (void)in_buf, (void)in_bufsz, (void)out_bufsz;
    int n = node_of(ino);
    if (n < 0 || cmd != (unsigned int)SIM_IOC_SYNC) {
        fuse_reply_err(req, ENOTTY);
        return;
    }
    sim_sleep_ns(sim_device_sync_ns(prof, nodes[n].vendor, nodes[n].index));
    fuse_reply_ioctl(req, 0, NULL, 0);
}

static const struct fuse_lowlevel_ops ops = {
    .lookup = op_lookup,
    .getattr = op_getattr,
    .readdir = op_readdir,
    .open = op_open,
    .read = op_read,
    .ioctl = op_ioctl,
};

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: hcs-simdrv MOUNTPOINT   (HCS_SIM_PROFILE, HCS_SIM_FAULTS)\n");
        return 2;
    }
    unsetenv("HCS_SIM_DEVICE_NODES"); /* this process is the driver: its delays are sleeps */
    char err[512] = "";
    if (sim_profile_load(&prof, err, sizeof err) != 0) {
        fprintf(stderr, "hcs-simdrv: %s\n", err[0] ? err : "cannot load HCS_SIM_PROFILE");
        return 1;
    }
    for (int v = 0; v < SIM_VENDOR_COUNT; v++)
        for (int i = 0; i < sim_vendor_count(prof, (sim_vendor_t)v) && nnodes < SIM_MAX_DEVICES; i++) {
            nodes[nnodes].vendor = (sim_vendor_t)v;
            nodes[nnodes].index = i;
            snprintf(nodes[nnodes].name, sizeof nodes[nnodes].name, "%s-%d", sim_vendor_name((sim_vendor_t)v), i);
            nnodes++;
        }
    char *fargv[] = {argv[0], "-o", "fsname=hcs-simdrv,subtype=hcs-simdrv", NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
    struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
    if (se == NULL)
        return 1;
    int rc = 1;
    if (fuse_set_signal_handlers(se) == 0) {
        if (fuse_session_mount(se, argv[1]) == 0) {
            printf("ready %s\n", argv[1]);
            fflush(stdout);
            struct fuse_loop_config *cfg = fuse_loop_cfg_create();
            fuse_loop_cfg_set_max_threads(cfg, 4 * SIM_MAX_DEVICES);
            fuse_loop_cfg_set_idle_threads(cfg, SIM_MAX_DEVICES);
            rc = fuse_session_loop_mt(se, cfg) != 0;
            fuse_loop_cfg_destroy(cfg);
            fuse_session_unmount(se);
        }
        fuse_remove_signal_handlers(se);
    }
    fuse_session_destroy(se);
    return rc;
}
